"""HTTP middleware: the proxy headers Django may believe; scrapes of /metrics;
a clear answer while the database is away."""

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from . import metrics
from .clientip import is_trusted_proxy


class ForwardedProtoGuard:
    """Drop `X-Forwarded-Proto` unless a trusted proxy (PLACE_TRUSTED_PROXIES) sent it.

    Django's SECURE_PROXY_SSL_HEADER believes the header from anyone; a client
    talking to daphne directly could then claim HTTPS and change what
    `request.is_secure()` (redirects, CSRF's origin checks) decides.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "HTTP_X_FORWARDED_PROTO" in request.META and not is_trusted_proxy(
            request.META.get("REMOTE_ADDR")
        ):
            del request.META["HTTP_X_FORWARDED_PROTO"]
        return self.get_response(request)


class MetricsForScrapers:
    """Answer `/metrics` for PLACE_METRICS_ALLOW's addresses before anything else.

    Prometheus scrapes each daphne port by address over plain HTTP
    (`127.0.0.1:8001`, docs/deploy.md): Django's host check (that is not an
    allowed host) and HTTPS redirect are for browsers and would refuse it.
    Staff users' browsers go the usual way, to canvas.metrics.metrics_view.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info == "/metrics" and metrics.address_allowed(request):
            return metrics.metrics_response()
        return self.get_response(request)


log = logging.getLogger("canvas.http")
RETRY_AFTER_SECONDS = 5


class DatabaseUnavailable:
    """A view that cannot reach the database answers 503 with Retry-After:
    JSON under /api/ (clients parse it), a short page elsewhere; not a 500
    or, with debug on, a traceback page that itself waits on the database."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(
        self, request: HttpRequest, exception: Exception
    ) -> HttpResponse | None:
        # Unreachable or gone away; not IntegrityError or ProgrammingError,
        # which are bugs and stay 500s with their tracebacks.
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        log.warning("database unavailable for %s", request.path, exc_info=exception)
        if request.path_info.startswith("/api/"):
            response = JsonResponse(
                {"error": "The database is unavailable; try again shortly."},
                status=503,
            )
        else:
            response = render(request, "canvas/unavailable.html", status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
