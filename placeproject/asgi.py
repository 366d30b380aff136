"""ASGI entry point: HTTP (with static files) and WebSockets in one application."""

import os

import django
from django.core.asgi import get_asgi_application

from placeproject.collect import collect_if_missing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "placeproject.settings")
django.setup(set_prefix=False)
# Before the app is built: the static files middleware indexes STATIC_ROOT then.
collect_if_missing()
# Build the Django app before importing anything that touches models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from canvas.consumers import CanvasConsumer  # noqa: E402
from canvas.wsentry import WebSocketEntry  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Origin check, the /ws/canvases/<slug>/ route and the session cookie
        # (canvas/wsentry.py: channels' middleware stack, without its memory).
        "websocket": WebSocketEntry(CanvasConsumer),
    }
)
