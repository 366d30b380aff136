"""Hands committed changes to the channel layer; owns group names and layer messages.

Services call `publish_on_commit` inside their transaction. Inside a server
process the changes go to an outbox that one task drains with a single
`group_send` per canvas to the canvas's group, whose members are the
per-process hubs (canvas/hub.py), not individual sockets: at once, with
whatever committed while the previous send was in flight, and not at all (no
wake-ups) while nothing is placed. Outside a server (management commands) the
send happens at once.

On Redis the outbox drains on a thread of its own with its own event loop,
not on the server's loop: that loop spends up to 60 % of its time writing
frames to thousands of sockets, up to ~80 ms at a time, and a commit waiting
for the end of a write often missed the other processes' next frame
(bench/RESULTS.md, fan-out, 2026-11-28). The in-memory layer belongs to the
server's loop, so there the outbox drains on that loop.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from functools import partial

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
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
    """Changes committed in this process, waiting for the next send."""

    def __init__(self) -> None:
        # Where the outbox drains: the server's loop, or the sender thread's.
        self.loop: asyncio.AbstractEventLoop | None = None
        # Where this process's hubs run, for their own commits.
        self.server_loop: asyncio.AbstractEventLoop | None = None
        self.pending: dict[int, list[Update]] = {}
        self.task: asyncio.Task | None = None
        self.wake = asyncio.Event()
        self.thread: threading.Thread | None = None

    def add(self, canvas_id: int, updates: list[Update]) -> None:
        self.pending.setdefault(canvas_id, []).extend(updates)
        self.wake.set()

    def running_loop(self) -> asyncio.AbstractEventLoop | None:
        """Where to hand changes, or None: then they are sent at once.

        None also once the hubs' loop has closed (tests start one per test),
        so a sender thread left over does not publish for a loop that is gone.
        """
        loop, server_loop = self.loop, self.server_loop
        for each in (loop, server_loop):
            if each is None or each.is_closed() or not each.is_running():
                return None
        return loop


_outbox = _Outbox()
# The outbox of the sender thread, on Redis; `_outbox` is it once started.
_sender = _Outbox()
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
    outbox = _outbox
    loop = outbox.running_loop()
    if loop is not None:
        loop.call_soon_threadsafe(outbox.add, canvas_id, list(updates))
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
    """Start draining the outbox for the running loop's hubs (once per loop;
    the sender thread, on Redis, once per process)."""
    global _outbox
    server_loop = asyncio.get_running_loop()
    if not isinstance(get_channel_layer(), InMemoryChannelLayer):
        if _sender.thread is None or not _sender.thread.is_alive():
            _sender_start()
        _sender.server_loop = server_loop
        _outbox = _sender
        return
    if _outbox.loop is server_loop and _outbox.task and not _outbox.task.done():
        return
    outbox = _Outbox()
    outbox.loop = outbox.server_loop = server_loop
    _drain_start(outbox)
    _outbox = outbox


def _drain_start(outbox: _Outbox) -> None:
    """Run `_drain_forever` on the outbox's loop, again if it ever ends."""
    assert outbox.loop is not None
    outbox.task = outbox.loop.create_task(_drain_forever(outbox))
    outbox.task.add_done_callback(partial(_drain_ended, outbox))


def _drain_ended(outbox: _Outbox, task: asyncio.Task) -> None:
    if task.cancelled() or outbox.loop is None or outbox.loop.is_closed():
        return  # the loop is shutting down
    log.error("the outbox stopped (%r); starting it again", task.exception())
    _drain_start(outbox)


def _sender_start() -> None:
    """The sender thread: an event loop of its own that only publishes."""
    started = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        _sender.loop, _sender.pending = loop, {}
        _sender.wake = asyncio.Event()
        _drain_start(_sender)
        loop.call_soon(started.set)  # once the loop runs, so it takes changes
        loop.run_forever()

    _sender.thread = threading.Thread(target=run, name="canvas-publish", daemon=True)
    _sender.thread.start()
    if not started.wait(timeout=5):
        raise RuntimeError("the outbox's sender thread did not start")


async def _drain_forever(outbox: _Outbox) -> None:
    while True:
        # Sleep until something commits: an idle server costs no wake-ups. No
        # timer: commits that land while a send is in flight go out together in
        # the next one. (A 20 ms publish tick cost 0.04-0.05 s of p99 at 5,000
        # watchers, bench/RESULTS.md, and saved nothing measurable.)
        await outbox.wake.wait()
        outbox.wake.clear()
        if not outbox.pending:
            continue
        batches, outbox.pending = outbox.pending, {}
        now = time.time()
        for canvas_id, updates in batches.items():
            _deliver_local(outbox, canvas_id, updates, now)
            try:
                message = {"type": MSG_PIXELS, "updates": updates, "sent_at": now}
                await asyncio.wait_for(_send(canvas_id, message), LAYER_TIMEOUT)
            except (Exception, asyncio.CancelledError) as error:
                task = asyncio.current_task()
                if isinstance(error, asyncio.CancelledError) and (
                    task is None or task.cancelling()
                ):
                    raise  # this task is being cancelled, not the send
                if isinstance(error, TimeoutError):
                    layer_error_count()  # _send counts the others
                log.warning(
                    "group_send failed for canvas %s; hubs will refill", canvas_id
                )


def _deliver_local(outbox: _Outbox, canvas_id: int, updates: list, now: float) -> None:
    """This process's own commits to its hub, on the hub's loop."""
    if outbox.server_loop is outbox.loop:
        _deliver_here(canvas_id, updates, now)
        return
    server_loop = outbox.server_loop
    if server_loop is None:
        return
    try:
        server_loop.call_soon_threadsafe(_deliver_here, canvas_id, updates, now)
    except RuntimeError:  # that loop has closed (tests): nobody to deliver to
        pass


def _deliver_here(canvas_id: int, updates: list, now: float) -> None:
    deliver = local_hubs.get(canvas_id)
    if deliver is None:
        return
    try:
        deliver(updates, now)
    except Exception:  # the hub refills from the database; the send goes on
        log.exception("the hub of canvas %s failed to take changes", canvas_id)
