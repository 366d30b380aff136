"""Prometheus metrics of this process, and the `/metrics` view that exposes them.

Each daphne process keeps its own figures; scrape every process (each listens on
its own port) and sum in Prometheus. The view answers staff users and the
addresses in PLACE_METRICS_ALLOW, nobody else.
"""

import ipaddress

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .clientip import request_ip

CONNECTIONS = Gauge("place_connections_open", "Open WebSockets in this process")
PLACEMENTS = Counter("place_placements", "Placements committed")
REJECTIONS = Counter("place_rejections", "Placements refused, by code", ["code"])
BATCH_SIZE = Histogram(
    "place_ingest_batch_size",
    "Placements per group-commit transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
BATCH_SECONDS = Histogram(
    "place_ingest_batch_seconds",
    "Time to commit one batch of placements",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
)
TICK_SECONDS = Histogram(
    "place_broadcast_tick_seconds",
    "Time one hub tick takes to write its frame to every local socket",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)
LAG_SECONDS = Histogram(
    "place_broadcast_lag_seconds",
    "From a change's publication to its frame being written, oldest per frame",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5),
)
LAYER_ERRORS = Counter("place_channel_layer_errors", "Failed channel-layer calls")
SLOW_CLIENTS = Counter(
    "place_slow_clients_closed", "Sockets closed because they fell behind"
)


def placement_accepted() -> None:
    PLACEMENTS.inc()


def placement_rejected(code: str) -> None:
    REJECTIONS.labels(code=code).inc()


def ingest_batch(*, size: int, seconds: float) -> None:
    BATCH_SIZE.observe(size)
    BATCH_SECONDS.observe(seconds)


def allowed(request: HttpRequest) -> bool:
    """Staff, or a client address inside one of PLACE_METRICS_ALLOW's networks."""
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    return address_allowed(request)


def address_allowed(request: HttpRequest) -> bool:
    try:
        # The client behind PLACE_TRUSTED_PROXIES, not the proxy itself.
        address = ipaddress.ip_address(request_ip(request) or "")
    except ValueError:
        return False
    return any(
        address in ipaddress.ip_network(network, strict=False)
        for network in settings.PLACE_METRICS_ALLOW  # checked by settings.py
    )


def metrics_response() -> HttpResponse:
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    return metrics_response()
