"""The WebSocket endpoint: parse, call a service, reply. No ORM here."""

import asyncio
import contextlib
import logging
import threading
import uuid
from datetime import datetime
from functools import partial
from typing import NamedTuple

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from . import exceptions as exc
from . import ingest, metrics, presence, protocol, selectors, services, sockets
from .clientip import scope_ip
from .hub import SERVER_ID, registry
from .models import Canvas
from .ratelimit import FloodDetector, TokenBucket

log = logging.getLogger("canvas.consumer")
events = logging.getLogger("canvas.placements")  # with the ingest's events


class CanvasConsumer(AsyncWebsocketConsumer):
    # No channel-layer channel per socket: broadcasts reach sockets through the
    # process's hub (canvas/hub.py). This keeps the layer's load per process, not
    # per socket, and a Redis outage cannot crash every open socket.
    channel_layer_alias = "no-layer-per-socket"
    # Set by canvas/wsentry.py before the socket runs.
    slug = ""
    session_key: str | None = None
    wire = None  # daphne's socket, once accepted
    hub = None
    channel_name = ""  # set in connect
    # From the moment its row may be written until the row is deleted.
    row_open = False
    admission: asyncio.Future | None = None  # the thread writing its row
    abandoned: threading.Event | None = None  # set when the socket is gone

    async def __call__(self, scope, receive, send) -> None:
        """AsyncConsumer.__call__ for a consumer without a layer channel.

        With one source of messages, awaiting it in the socket's own task is
        enough: channels' await_many_dispatch keeps a Task and an asyncio.wait
        future alive for every idle socket (about 2.5 KB each).
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        self.closed = False
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            # Also when daphne kills the task (a handshake that outlived its
            # timeout, say) or connect fails: no row or hub entry outlives it.
            await self.release()

    async def dispatch(self, message) -> None:
        """AsyncConsumer.dispatch without its per-message `aclose_old_connections`.

        That is a thread hop for every frame (a fifth of a server's time under
        heavy placing, bench/RESULTS.md ingest). This consumer never touches the
        ORM on the event loop: its rows are written and deleted on the threads
        of canvas/presence.py, which return their connections after each call,
        and placements go through the ingest thread.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.channel_name = f"{SERVER_ID}!{uuid.uuid4().hex}"
        self.player_id: int | None = None
        self.player_name: str | None = None
        self.ready = False
        self.backlog: list[str] = []
        self.ip = scope_ip(self.scope)
        rate = settings.PLACE_MESSAGE_RATE
        self.bucket = TokenBucket(rate, burst=max(1.0, rate))
        # Sustained flooding: refusals for two seconds' worth of the allowed rate.
        self.flood = FloodDetector(limit=max(10, int(rate * 2)), window=5.0)
        # The row may be written from here on, even if this task is cancelled
        # while it waits: release() deletes it after the write, whichever way.
        self.row_open = True
        registry.held.add(self.channel_name)
        # On an admission thread (canvas/presence.py): handshakes do not wait
        # for each other's round trips. Shielded: if this task is killed, the
        # admission still finishes and release() deletes its row after it.
        self.abandoned = threading.Event()
        self.admission = presence.run(
            _admit,
            # Set by canvas/wsentry.py; the scope's, when mounted by a URLRouter.
            self.slug or self.scope.get("url_route", {}).get("kwargs", {}).get("slug"),
            self.session_key or self.scope.get("session_key"),
            channel_name=self.channel_name,
            ip=self.ip,
            abandoned=self.abandoned,
        )
        try:
            identity = await asyncio.shield(self.admission)
        except exc.TooManyConnections:
            self.row_open = False  # refused before its row was written
            await self.close(code=protocol.CLOSE_TOO_MANY)
            return
        except exc.CanvasNotFound:
            self.row_open = False
            # Accept first so the client sees the reason: a refused handshake
            # reaches a browser as a bare HTTP 403 with no close code.
            await self.accept()
            await self.close(code=protocol.CLOSE_NO_CANVAS)
            return
        except DatabaseError:
            self.row_open = False  # the row is written last, in the same step
            log.warning("database unavailable during connect")
            # Accepted first, as for an unknown canvas: a close before accept
            # reaches the client as a bare HTTP 403, which reads as "refused".
            await self.accept()
            await self.close(code=protocol.CLOSE_UNAVAILABLE)
            return
        # Admitted: nothing to wait for or call off any more. Dropped, as the
        # future holds the identity (a Canvas row) for the socket's life.
        self.admission = self.abandoned = None
        canvas = identity.canvas
        registry.rows[self.channel_name] = (canvas.pk, identity.player_id, self.ip)
        self.session_key = identity.session_key
        self.player_id, self.player_name = identity.player_id, identity.player_name
        # Everything the socket needs from its request is read: drop it rather
        # than keep about a kilobyte per idle socket. The list is emptied in
        # place because daphne's protocol holds the same list; nothing reads
        # either afterwards.
        headers = self.scope.get("headers")
        if isinstance(headers, list):
            headers.clear()
        self.scope["headers"] = ()
        # Only the id stays: the hub sends later settings changes itself.
        self.canvas_id = canvas.pk
        await self.accept()
        # From here on, text frames go straight to daphne's socket, as the
        # hub's broadcasts do (canvas/sockets.py); None under other servers.
        self.wire = sockets.daphne_socket(self)
        try:
            hub = await registry.hub(self.canvas_id)
        except DatabaseError:
            # The close brings websocket.disconnect, and with it the cleanup.
            log.warning("database unavailable while opening a socket")
            await self.close(code=protocol.CLOSE_UNAVAILABLE)
            return
        self.hub = hub
        seq = self.hub.join(self)
        # The settings the hub will compare later changes against, read with
        # no await after the join: a pause or resume that the hub has not yet
        # seen reaches this socket as a `canvas` frame like everyone else's.
        cooldown, is_open, width, height = self.hub.settings or (
            canvas.cooldown_seconds,
            canvas.is_open,
            canvas.width,
            canvas.height,
        )
        await self.send(
            text_data=protocol.hello_frame(
                seq=seq,
                cooldown_seconds=cooldown,
                cooldown_remaining=identity.cooldown_remaining,
                can_place=(
                    self.player_id is not None and identity.ban is None and is_open
                ),
                user=self.player_name,
            )
        )
        # Why a player may not place, for the page to say so before a click.
        if not is_open:
            await self.send(
                text_data=protocol.canvas_frame(
                    cooldown_seconds=cooldown, open_=False, width=width, height=height
                )
            )
        if identity.ban is not None:
            until, reason = identity.ban
            await self.send(text_data=protocol.banned_frame(until=until, reason=reason))
        self.ready = True
        for frame in self.backlog:
            await self.send(text_data=frame)
        self.backlog = []
        # The hub sends the count every heartbeat; a new player sees it at once.
        try:
            online = await self.hub.online_count()
        except DatabaseError:  # the next heartbeat brings it instead
            log.warning("online count unavailable", exc_info=True)
            return
        await self.send(text_data=protocol.online_frame(online))

    async def send(self, text_data=None, bytes_data=None, close=False) -> None:
        """Send unless the socket is closing or gone: replies to frames still
        queued behind a close (a flood, say) are dropped, not tracebacks."""
        if self.closed:
            return
        if self.wire is not None and text_data is not None and not close:
            sockets.send_text(self.wire, text_data)
            return
        try:
            await super().send(text_data=text_data, bytes_data=bytes_data, close=close)
        except Disconnected:  # daphne: the peer went between its frame and ours
            self.closed = True

    async def close(self, code=None, reason=None) -> None:
        if not self.closed:
            self.closed = True
            await super().close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        self.closed = True
        await self.release()

    async def release(self) -> None:
        """Leave the hub and delete the socket's row; once, however it ends."""
        if self.abandoned is not None:
            self.abandoned.set()  # an admission still queued skips its work
        registry.rows.pop(self.channel_name, None)  # not to be written again
        if self.hub is not None:
            self.hub.leave(self)
            self.hub = None
        if not self.row_open or registry.closing:
            # No row, or the process is stopping: then the next start's sweep
            # (or, from another host, the stale sweep) removes all its rows.
            self.row_open = False
            registry.held.discard(self.channel_name)
            return
        self.row_open = False
        # Shielded: daphne cancels a slow task again every few seconds, and the
        # delete must still happen, after an admission still in flight. The
        # row stays held (refreshed) until it is gone.
        delete = presence.release(self.channel_name, after=self.admission)
        delete.add_done_callback(partial(_row_deleted, self.channel_name))
        with contextlib.suppress(DatabaseError):  # logged by _row_deleted
            await asyncio.shield(delete)

    async def deliver(self, frame: str) -> None:
        """A broadcast frame from the hub; held back until `hello` has gone out."""
        if self.ready:
            await self.send(text_data=frame)
        else:
            self.backlog.append(frame)

    async def receive(self, text_data: str | None = None, bytes_data=None) -> None:
        if self.closed:  # frames that arrived after we closed: nobody to answer
            return
        # Size first: a frame over 16 KiB closes the socket, rate limit or not.
        if text_data is not None:
            size = len(text_data.encode("utf-8", "surrogatepass"))
        else:
            size = len(bytes_data or b"")
        if size > protocol.MAX_FRAME_BYTES:
            await self.close(code=protocol.CLOSE_TOO_LARGE)
            return
        wait = self.bucket.take()
        if wait > 0:
            if self.flood.refused():
                await self.close(code=protocol.CLOSE_TOO_FAST)
                return
            await self.refuse("rate_limited", exc.MSG_RATE_LIMITED, wait)
            return
        if text_data is None:
            await self.refuse("bad_request", exc.MSG_BINARY)
            return
        try:
            request = protocol.parse_client_message(text_data)
        except protocol.ProtocolError as error:
            await self.refuse("bad_request", str(error))
            return
        await self.place(request)

    async def place(self, request: protocol.PlaceRequest) -> None:
        if self.player_id is None:
            message = exc.MSG_LOGIN_REQUIRED
            if not self.session_key:
                message = (
                    exc.MSG_NO_SESSION if not settings.PLACE_REQUIRE_LOGIN else message
                )
            await self.refuse("login_required", message)
            return
        try:
            result = await ingest.batcher.submit(
                ingest.PlaceRequest(
                    canvas_id=self.canvas_id,
                    player_id=self.player_id,
                    x=request.x,
                    y=request.y,
                    color=request.color,
                    ip=self.ip,
                )
            )
        except exc.PlaceError as error:
            await self.reject(error.code, error.message, error.retry_after)
            return
        except DatabaseError:
            log.warning("placement failed: database unavailable", exc_info=True)
            await self.reject("unavailable", exc.MSG_UNAVAILABLE)
            return
        await self.send(
            text_data=protocol.accepted_frame(
                x=request.x,
                y=request.y,
                color=request.color,
                seq=result.seq,
                cooldown_remaining=result.cooldown_remaining,
            )
        )

    async def refuse(self, code: str, message: str, retry_after: float | None = None):
        """A refusal decided here, before the ingest thread (which counts and
        logs its own): counted by code and logged like those."""
        metrics.placement_rejected(code)
        events.info(
            "event=rejection canvas=%s player=%s code=%s ip=%s",
            self.canvas_id,
            self.player_id,
            code,
            self.ip,
        )
        await self.reject(code, message, retry_after)

    async def reject(self, code: str, message: str, retry_after: float | None = None):
        await self.send(
            text_data=protocol.rejected_frame(
                code=code, message=message, retry_after=retry_after
            )
        )


class Identity(NamedTuple):
    canvas: Canvas
    session_key: str | None
    player_id: int | None
    player_name: str | None
    cooldown_remaining: float
    ban: tuple[datetime, str] | None  # (until, reason) while banned


def _row_deleted(channel_name: str, delete: asyncio.Future) -> None:
    registry.held.discard(channel_name)
    if not delete.cancelled() and isinstance(delete.exception(), DatabaseError):
        # Swept as stale once no heartbeat refreshes it.
        log.warning(
            "could not remove a closed socket's row", exc_info=delete.exception()
        )


def _admit(
    slug: str,
    session_key: str | None,
    *,
    channel_name: str,
    ip: str | None,
    abandoned: threading.Event | None = None,
) -> Identity:
    """Identify a new socket and record it, or refuse it (in a thread).

    Canvas, live session, player, cooldown and ban; then its Connection row,
    counted against its address's limit in the same step.
    Only a live session counts from here on: an expired one is no session.
    A socket given up meanwhile (`abandoned`) gets neither work nor row.
    """
    if abandoned is not None and abandoned.is_set():
        raise exc.Abandoned(channel_name)
    limit = settings.PLACE_MAX_CONNECTIONS_PER_IP
    if limit > 0 and ip and selectors.connections_held(ip=ip) >= limit:
        # Already at the cap: refused for one count, before the work below
        # (the exact count, under a lock, comes with the row).
        raise exc.TooManyConnections(ip)
    canvas = selectors.canvas_get(slug=slug)
    user, session_key = selectors.session_identity(session_key)
    player = services.player_identify(user=user, session_key=session_key)
    player_id = player.pk if player else None
    remaining = selectors.cooldown_remaining(canvas=canvas, player_id=player_id)
    name = player.name if player else None
    ban = None
    if player is not None and player.is_banned():
        ban = (player.banned_until, player.ban_reason)
    if abandoned is not None and abandoned.is_set():
        raise exc.Abandoned(channel_name)
    services.connection_open(
        channel_name=channel_name,
        canvas_id=canvas.pk,
        player_id=player_id,
        server=SERVER_ID,
        ip=ip,
        ip_limit=settings.PLACE_MAX_CONNECTIONS_PER_IP,
    )
    return Identity(canvas, session_key, player_id, name, remaining, ban)
