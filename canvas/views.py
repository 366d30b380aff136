"""HTTP: the player page, the canvas API and the account pages."""

import re
from functools import wraps

from django.conf import settings
from django.contrib.auth import login, logout
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponsePermanentRedirect,
    JsonResponse,
)
from django.shortcuts import redirect, render
from django.urls import Resolver404, resolve
from django.utils.http import parse_etags
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from . import exceptions as exc
from . import ratelimit, selectors, services
from .account_forms import SignupForm
from .clientip import request_ip
from .models import PALETTE_2017, PALETTE_2017_NAMES


def _canvas_or_404(view):
    """Resolve `slug` to a canvas; unknown slugs get the API's JSON 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, slug: str, **kwargs) -> HttpResponse:
        try:
            canvas = selectors.canvas_get(slug=slug)
        except exc.CanvasNotFound:
            return JsonResponse({"error": f"no canvas named {slug!r}"}, status=404)
        return view(request, canvas, **kwargs)

    return wrapper


def _api_read(view):
    """GET and HEAD only; any other method gets a JSON 405.

    Exempt from CSRF, which would otherwise answer a POST first with its HTML
    403 page: these views write nothing, so there is nothing to protect.
    """

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            response = JsonResponse(
                {"error": f"{request.method} is not allowed here; use GET."},
                status=405,
            )
            response["Allow"] = "GET, HEAD"
            return response
        return view(request, *args, **kwargs)

    return csrf_exempt(wrapper)


def canvas_json(canvas) -> dict:
    return {
        "slug": canvas.slug,
        "title": canvas.title,
        "width": canvas.width,
        "height": canvas.height,
        "palette": canvas.palette,
        "cooldown_seconds": canvas.cooldown_seconds,
        "open": canvas.is_open,
        "seq": selectors.canvas_seq(canvas_id=canvas.pk),
    }


def palette_names(palette: list[str]) -> list[str]:
    if palette == PALETTE_2017:
        return list(PALETTE_2017_NAMES)
    return [f"colour {colour}" for colour in palette]


@require_GET
def play(request: HttpRequest, slug: str) -> HttpResponse:
    try:
        canvas = selectors.canvas_get(slug=slug)
    except exc.CanvasNotFound:
        return render(request, "canvas/missing.html", {"slug": slug}, status=404)
    if not settings.PLACE_REQUIRE_LOGIN and not request.user.is_authenticated:
        # Anonymous play: the session is the player's identity, so make sure
        # one exists before the page opens its socket.
        request.session.setdefault("anonymous_player", True)
        if not request.session.session_key:
            request.session.save()
    player = services.player_identify(
        user=request.user, session_key=request.session.session_key
    )
    config = {
        "slug": canvas.slug,
        "title": canvas.title,
        "width": canvas.width,
        "height": canvas.height,
        "palette": canvas.palette,
        "paletteNames": palette_names(canvas.palette),
        "cooldownSeconds": canvas.cooldown_seconds,
        "requireLogin": settings.PLACE_REQUIRE_LOGIN,
        "player": player.name if player else None,
    }
    swatches = list(
        zip(
            range(len(canvas.palette)),
            canvas.palette,
            config["paletteNames"],
            strict=True,
        )
    )
    return render(
        request,
        "canvas/play.html",
        {"canvas": canvas, "config": config, "swatches": swatches},
    )


@_api_read
@_canvas_or_404
def canvas_meta(request: HttpRequest, canvas) -> JsonResponse:
    return JsonResponse(canvas_json(canvas))


def _not_modified(request: HttpRequest, etag: str) -> bool:
    """If-None-Match by RFC 9110: `*`, or any listed tag, compared weakly."""
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    tags = parse_etags(header)
    ours = etag.removeprefix("W/")
    return tags == ["*"] or any(tag.removeprefix("W/") == ours for tag in tags)


def _not_modified_response(headers: dict) -> HttpResponse:
    response = HttpResponse(status=304, headers=headers)
    del response["Content-Type"]  # no body, so no type (RFC 9110 section 15.4.5)
    return response


@_api_read
@_canvas_or_404
def board(request: HttpRequest, canvas) -> HttpResponse:
    snapshot = selectors.board_snapshot(canvas=canvas)
    gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
    headers = {
        # The gzipped bytes decode to the same board: a weak tag, as Django's
        # GZipMiddleware gives (If-None-Match compares weakly, so either form
        # gets its 304).
        "ETag": f"W/{snapshot.etag}" if gzipped else snapshot.etag,
        "X-Canvas-Seq": str(snapshot.seq),
        "Cache-Control": "no-cache",
        "Vary": "Accept-Encoding",
    }
    if _not_modified(request, snapshot.etag):
        return _not_modified_response(headers)
    data = snapshot.data
    if gzipped:
        data = selectors.board_gzipped(snapshot, canvas_id=canvas.pk)
        headers["Content-Encoding"] = "gzip"
    return HttpResponse(data, content_type="application/octet-stream", headers=headers)


def accepts_gzip(header: str) -> bool:
    """Whether Accept-Encoding allows gzip (RFC 9110 12.5.3): named, or `*`,
    with a q above 0. A client that sends none (a bare socket, urllib) gets
    the plain bytes."""
    weights: dict[str, float] = {}
    for item in header.lower().split(","):
        coding, _, params = item.strip().partition(";")
        q = 1.0
        match = re.search(r"q\s*=\s*([0-9.]+)", params)
        if match:
            try:
                q = float(match.group(1))
            except ValueError:
                q = 0.0
        if coding.strip():
            weights[coding.strip()] = q
    return weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0))) > 0


@_api_read
@_canvas_or_404
def board_png(request: HttpRequest, canvas) -> HttpResponse:
    etag, png = selectors.board_png(canvas=canvas)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _not_modified(request, etag):
        return _not_modified_response(headers)
    return HttpResponse(png, content_type="image/png", headers=headers)


MSG_BAD_COORDINATES = "x and y must be whole numbers."
MSG_NO_ENDPOINT = "No such API endpoint."
# Strict: int() would also take " 1", "+1" and "1_0". Nine digits are plenty.
COORDINATE = re.compile(r"-?[0-9]{1,9}")


@_api_read
@_canvas_or_404
def pixel(request: HttpRequest, canvas, x: str, y: str) -> JsonResponse:
    if not (COORDINATE.fullmatch(x) and COORDINATE.fullmatch(y)):
        return JsonResponse({"error": MSG_BAD_COORDINATES}, status=404)
    try:
        info = selectors.pixel_info(canvas=canvas, x=int(x), y=int(y))
    except exc.PlaceError:
        return JsonResponse({"error": exc.MSG_OUT_OF_BOUNDS}, status=404)
    return JsonResponse(
        {
            "x": info.x,
            "y": info.y,
            "color": info.color,
            "placed_by": info.placed_by,
            "placed_at": info.placed_at.isoformat() if info.placed_at else None,
        }
    )


@csrf_exempt  # a POST without a token gets this JSON 404 too, not a 403 page
def api_not_found(request: HttpRequest, path: str) -> HttpResponse:
    """Any other path under /api/: a JSON 404, as API clients expect.

    This route matches everything, which would stop CommonMiddleware adding a
    missing slash, so that redirect is made here.
    """
    if _slash_would_match(request):
        target = request.get_full_path(force_append_slash=True)
        return HttpResponsePermanentRedirect(target)
    return JsonResponse({"error": MSG_NO_ENDPOINT}, status=404)


def _slash_would_match(request: HttpRequest) -> bool:
    path = request.path_info
    if not settings.APPEND_SLASH or path.endswith("/"):
        return False
    if request.method not in ("GET", "HEAD"):
        return False
    try:
        return resolve(path + "/").func is not api_not_found
    except Resolver404:
        return False


MSG_TOO_MANY_ATTEMPTS = "Too many attempts from your address; try again later."


def _attempts_allowed(request: HttpRequest, kind: str, limit: int, window: int) -> bool:
    """Count a POST to an account form (or a sign-up) against the address."""
    if request.method != "POST":
        return True
    key = f"attempts:{kind}:{request_ip(request)}"
    return ratelimit.hit(key, limit=limit, window=window)


def _too_many(request: HttpRequest, template: str, form) -> HttpResponse:
    context = {"form": form, "throttled": MSG_TOO_MANY_ATTEMPTS}
    context["next"] = _safe_next(request)
    return render(request, template, context, status=429)


def login_page(request: HttpRequest) -> HttpResponse:
    """Django's login view, limited per address (PLACE_LOGIN_LIMIT)."""
    from django.contrib.auth.forms import AuthenticationForm
    from django.contrib.auth.views import LoginView

    limit, window = settings.PLACE_LOGIN_LIMIT, settings.PLACE_LOGIN_WINDOW
    if not _attempts_allowed(request, "login", limit, window):
        return _too_many(request, "registration/login.html", AuthenticationForm())
    return LoginView.as_view()(request)


def signup(request: HttpRequest) -> HttpResponse:
    """Sign-up, limited to PLACE_SIGNUP_LIMIT new accounts per address per window.

    A typo does not use up that allowance; but every form sent counts against
    the log-in limit's numbers, so nobody probes usernames or runs the password
    validators without end.
    """
    limit, window = settings.PLACE_LOGIN_LIMIT, settings.PLACE_LOGIN_WINDOW
    if not _attempts_allowed(request, "signup-form", limit, window):
        return _too_many(request, "registration/signup.html", SignupForm())
    if request.method == "POST":
        form = SignupForm(request.POST)
        if form.is_valid():
            limit, window = settings.PLACE_SIGNUP_LIMIT, settings.PLACE_SIGNUP_WINDOW
            if not _attempts_allowed(request, "signup", limit, window):
                return _too_many(request, "registration/signup.html", SignupForm())
            user = form.save()
            login(request, user)
            return redirect(_safe_next(request))
    else:
        form = SignupForm()
    # The view to return to survives a form sent back with errors.
    context = {"form": form, "next": _safe_next(request)}
    return render(request, "registration/signup.html", context)


def logout_page(request: HttpRequest) -> HttpResponse:
    """GET asks to confirm; POST (with CSRF) logs out, back to `next`."""
    if request.method == "POST":
        target = _safe_next(request, default=settings.LOGOUT_REDIRECT_URL)
        logout(request)
        return redirect(target)
    return render(request, "registration/logout.html", {"next": _safe_next(request)})


def _safe_next(request: HttpRequest, default: str = "/") -> str:
    from django.utils.http import url_has_allowed_host_and_scheme

    target = request.POST.get("next") or request.GET.get("next") or default
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return default
