"""HTTP middleware: the proxy headers Django may believe; scrapes of /metrics."""

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

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
