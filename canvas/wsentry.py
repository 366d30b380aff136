"""The WebSocket entry: origin, route and session cookie checked once per socket.

channels' `AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(...)))` keeps
five suspended coroutines, four copies of the scope and lazy session and user
objects alive for as long as each socket is open: about 6 KB a socket, a fifth of
an idle connection's memory (bench/RESULTS.md, idle). This does the same checks
with channels' own origin rules and leaves the consumer one small scope holding
the session key; the consumer resolves the user in the same database call that
identifies the player (consumers._identify).
"""

import re
from urllib.parse import ParseResult, urlparse

from channels.security.websocket import AllowedHostsOriginValidator, WebsocketDenier
from django.conf import settings
from django.http.cookie import parse_cookie

ROUTE = re.compile(r"/ws/canvases/(?P<slug>[-a-zA-Z0-9_]+)/")


def request_parts(headers) -> tuple[ParseResult | None, str | None]:
    """The parsed Origin header and the session cookie's value, if any."""
    origin = session_key = None
    for name, value in headers:
        if name == b"origin":
            try:
                origin = urlparse(value.decode("latin1"))
            except (UnicodeDecodeError, ValueError):
                origin = None
        elif name == b"cookie":
            # Django's lenient parser, as channels' CookieMiddleware uses.
            # The first header naming the session wins, as in channels.
            cookies = parse_cookie(value.decode("latin1"))
            session_key = session_key or cookies.get(settings.SESSION_COOKIE_NAME)
    return origin, session_key


class WebSocketEntry:
    """ASGI app for `websocket` scopes: deny, or run one consumer for the socket."""

    def __init__(self, consumer_class) -> None:
        self.consumer_class = consumer_class
        # Only its origin rules are used (settings.ALLOWED_HOSTS, as channels does).
        self.origins = AllowedHostsOriginValidator(None)

    async def __call__(self, scope, receive, send) -> None:
        origin, session_key = request_parts(scope.get("headers", ()))
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):  # daphne --root-path, as URLRouter did
            path = path[len(root) :]
        route = ROUTE.fullmatch(path)
        if route is None or not self.origins.valid_origin(origin):
            await WebsocketDenier()(scope, receive, send)
            return
        consumer = self.consumer_class()
        # Handed over beside the scope, not in it: two more keys would move
        # daphne's scope dict into a table twice the size for the socket's life.
        consumer.slug, consumer.session_key = route["slug"], session_key
        await consumer(scope, receive, send)
