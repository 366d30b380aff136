"""Hands committed changes to the channel layer; owns group names and layer messages.

Services call `publish_on_commit` inside their transaction. Inside a server
process the changes go to an outbox that one task drains with a single
`group_send` per canvas to the canvas's group, whose members are the
per-process hubs (canvas/hub.py), not individual sockets: as soon as the
loop gets to it, with whatever committed while the previous send was in
flight, and not at all (no wake-ups) while nothing is placed. Outside a server
(management commands) the send happens at once.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from . import metrics
from .protocol import Update

log = logging.getLogger("canvas.broadcast")

MSG_PIXELS = "pixels.batch"
MSG_CANVAS = "canvas.changed"
MSG_PLAYER = "player.changed"
# The longest a channel-layer call may take: a Redis that hangs (rather than
# refusing connections) must not stall publishing or a hub's upkeep for good.
LAYER_TIMEOUT = 5.0
# This process's hubs by canvas id (canvas/hub.py registers them): its own
# commits reach them straight from the outbox, without Redis's round trip, and
# while Redis is away. The same changes also come through the group; a hub
# keeps one of each seq.
local_hubs: dict[int, Callable[[list, float], None]] = {}


def group_name(canvas_id: int) -> str:
    return f"canvas.{canvas_id}"


class _Outbox:
    """Changes committed in this process, waiting for the next publish tick."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: dict[int, list[Update]] = {}
        self.task: asyncio.Task | None = None
        self.wake = asyncio.Event()

    def add(self, canvas_id: int, updates: list[Update]) -> None:
        self.pending.setdefault(canvas_id, []).extend(updates)
        self.wake.set()

    def running_loop(self) -> asyncio.AbstractEventLoop | None:
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return None
        return loop


_outbox = _Outbox()
layer_errors = 0  # also counted by metrics.LAYER_ERRORS for /metrics


def layer_error_count() -> None:
    """Count one failed channel-layer call."""
    global layer_errors
    layer_errors += 1
    metrics.LAYER_ERRORS.inc()


def publish_on_commit(*, canvas_id: int, updates: list[Update]) -> None:
    transaction.on_commit(lambda: publish(canvas_id=canvas_id, updates=updates))


def publish(*, canvas_id: int, updates: list[Update]) -> None:
    """Send committed changes to every process's hub; safe from any thread."""
    loop = _outbox.running_loop()
    if loop is not None:
        loop.call_soon_threadsafe(_outbox.add, canvas_id, list(updates))
        return
    try:
        async_to_sync(_send)(canvas_id, {"type": MSG_PIXELS, "updates": updates})
    except Exception as error:  # the hubs refill from the database; it is saved
        log.warning(
            "could not publish to canvas %s's servers (%s); they read the change"
            " from the database within PLACE_GAP_TIMEOUT",
            canvas_id,
            error,
        )


def canvas_changed(*, canvas_id: int) -> None:
    """Tell every process a canvas's settings changed (cooldown, open, size)."""
    transaction.on_commit(lambda: _send_now_or_later(canvas_id, {"type": MSG_CANVAS}))


def player_changed(*, player_id: int, canvas_ids: list[int]) -> None:
    """Tell the hubs of these canvases that a player was banned or unbanned,
    so the player's open pages learn it at once, not at their next click."""
    message = {"type": MSG_PLAYER, "player_id": player_id}
    transaction.on_commit(
        lambda: [_send_now_or_later(canvas_id, message) for canvas_id in canvas_ids]
    )


def _send_now_or_later(canvas_id: int, message: dict) -> None:
    loop = _outbox.running_loop()
    try:
        if loop is not None:
            asyncio.run_coroutine_threadsafe(_send(canvas_id, message), loop)
        else:
            async_to_sync(_send)(canvas_id, message)
    except Exception as error:  # settings are polled too; bans apply regardless
        log.warning("could not notify canvas %s's servers (%s)", canvas_id, error)


async def _send(canvas_id: int, message: dict) -> None:
    try:
        await get_channel_layer().group_send(group_name(canvas_id), message)
    except Exception:
        layer_error_count()
        raise


def outbox_start() -> None:
    """Start draining the outbox on the running loop (once per loop)."""
    loop = asyncio.get_running_loop()
    if _outbox.loop is loop and _outbox.task and not _outbox.task.done():
        return
    _outbox.loop = loop
    _outbox.pending = {}
    _outbox.wake = asyncio.Event()
    _outbox.task = loop.create_task(_drain_forever())


async def _drain_forever() -> None:
    while True:
        # Sleep until something commits: an idle server costs no wake-ups. No
        # timer: commits that land while a send is in flight go out together in
        # the next one. (A 20 ms publish tick cost 0.04-0.05 s of p99 at 5,000
        # watchers, bench/RESULTS.md, and saved nothing measurable.)
        await _outbox.wake.wait()
        _outbox.wake.clear()
        if not _outbox.pending:
            continue
        batches, _outbox.pending = _outbox.pending, {}
        now = time.time()
        for canvas_id, updates in batches.items():
            deliver = local_hubs.get(canvas_id)
            if deliver is not None:
                deliver(updates, now)
            try:
                message = {"type": MSG_PIXELS, "updates": updates, "sent_at": now}
                await asyncio.wait_for(_send(canvas_id, message), LAYER_TIMEOUT)
            except Exception as error:
                if isinstance(error, TimeoutError):
                    layer_error_count()  # _send counts the others
                log.warning(
                    "group_send failed for canvas %s; hubs will refill", canvas_id
                )
