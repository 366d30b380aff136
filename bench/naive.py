"""The naive design, for comparison only: never used by the product.

Every socket joins the canvas's channel-layer group itself, and every placement
is its own transaction followed by its own group_send, so each change costs one
layer message and one WebSocket frame per socket. Run with
`daphne bench.naive:application`.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "placeproject.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.db import database_sync_to_async  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import DatabaseError  # noqa: E402
from django.urls import path  # noqa: E402

from canvas import broadcast, protocol, selectors, services  # noqa: E402
from canvas import exceptions as exc  # noqa: E402

# The naive design sends its own per-pixel message; skip the product's outbox.
broadcast.publish_on_commit = lambda **kwargs: None
# ... on the channels-redis core layer, the documented default (before first use).
if settings.REDIS_URL:
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [settings.REDIS_URL]},
        }
    }


def _identify(scope: dict):
    canvas = selectors.canvas_get(slug=scope["url_route"]["kwargs"]["slug"])
    session = scope.get("session")
    player = services.player_identify(
        user=scope.get("user"),
        session_key=session.session_key if session is not None else None,
    )
    return (
        canvas,
        (player.pk if player else None),
        selectors.canvas_seq(canvas_id=canvas.pk),
    )


class NaiveConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.canvas, self.player_id, seq = await database_sync_to_async(_identify)(
            self.scope
        )
        self.group = f"naive.{self.canvas.pk}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send(
            text_data=protocol.hello_frame(
                seq=seq,
                cooldown_seconds=self.canvas.cooldown_seconds,
                cooldown_remaining=0.0,
                can_place=self.player_id is not None,
                user=None,
            )
        )

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        request = protocol.parse_client_message(text_data)
        try:
            result = await database_sync_to_async(services.placement_create)(
                canvas_id=self.canvas.pk,
                player_id=self.player_id,
                x=request.x,
                y=request.y,
                color=request.color,
            )
        except exc.PlaceError as error:
            await self.send(
                text_data=protocol.rejected_frame(
                    code=error.code, message="", retry_after=error.retry_after
                )
            )
            return
        except DatabaseError:
            await self.send(
                text_data=protocol.rejected_frame(
                    code="unavailable", message="", retry_after=None
                )
            )
            return
        update = [result.seq, request.x, request.y, request.color]
        await self.channel_layer.group_send(
            self.group, {"type": "naive.pixel", "update": update}
        )
        await self.send(
            text_data=protocol.accepted_frame(
                x=request.x,
                y=request.y,
                color=request.color,
                seq=result.seq,
                cooldown_remaining=result.cooldown_remaining,
            )
        )

    async def naive_pixel(self, event: dict) -> None:
        await self.send(text_data=protocol.pixels_frame([tuple(event["update"])]))


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter([path("ws/canvases/<slug:slug>/", NaiveConsumer.as_asgi())])
            )
        ),
    }
)
