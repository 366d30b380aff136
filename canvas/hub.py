"""One hub per canvas per server process: the process's single member of the
canvas group. It orders incoming changes by seq, refills any gap from the
database, and once per tick writes one pre-encoded frame to every local socket.

This is what lets one process feed thousands of browsers: the channel layer
carries one message per process per tick, not one per socket per pixel.
"""

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Protocol

from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from . import broadcast, metrics, presence, protocol, selectors, services, sockets
from .protocol import Update

log = logging.getLogger("canvas.hub")

SERVER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
# A socket whose unsent bytes pass PLACE_SLOW_CLIENT_BYTES is closed with this
# code: it would otherwise fall silently out of step. The client reconnects,
# gets a fresh `hello` and refetches the board (docs/protocol.md).
CLOSE_TOO_SLOW = 4010
SLOW_ABORT_SECONDS = 5.0
# The most of its event loop's time a hub's writes may take (see _tick_forever).
WRITE_SHARE = 0.6
# How recent another hub's frame must be for its write time to count.
BUSY_WINDOW = 1.0
# Close tasks started from synchronous code, kept referenced until they finish.
_background: set[asyncio.Task] = set()
# How long a read of the online count serves new sockets (adjusted locally).
ONLINE_FRESH_SECONDS = 1.0
# The longest a group join may take before the hub goes on without it.
LAYER_TIMEOUT = broadcast.LAYER_TIMEOUT

# The heartbeat's own thread. Every other database call of a consumer or hub
# waits its turn on asgiref's one shared thread, which a storm of handshakes
# can keep busy for longer than the stale time: queued behind it, a heartbeat
# would arrive too late and another process would sweep live sockets' rows.
_upkeep_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="place-upkeep")


def _upkeep(func):
    return partial(presence.call_in, _upkeep_thread, func)


def _in_background(work: Coroutine) -> None:
    """Run `work` on its own, kept referenced until it finishes."""
    task = asyncio.ensure_future(work)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _close_later(listener: "Listener", code: int) -> None:
    """Close a socket behind an ASGI send, from synchronous code."""
    close = getattr(listener, "close", None)
    if close is not None:
        _in_background(close(code=code))


class Listener(Protocol):
    async def deliver(self, frame: str) -> None: ...


class Hub:
    def __init__(self, canvas_id: int) -> None:
        self.canvas_id = canvas_id
        self.layer = get_channel_layer()
        self.channel = ""
        self.listeners: set[Listener] = set()
        self.last_seq = 0
        self.pending: dict[int, Update] = {}
        self.watch_target: int | None = None
        self.tasks: list[asyncio.Task] = []
        self.tick_seconds = settings.PLACE_BROADCAST_TICK
        self.wake = asyncio.Event()  # set when changes arrive for the tick loop
        # Seconds the last frame's writes held the loop, and when it started.
        self.last_busy = 0.0
        self.last_flush = 0.0
        self.wires: dict[Listener, WebSocketProtocol | None] = {}
        self.roads: dict[Listener, sockets.Road | None] = {}
        self.oldest_pending: float | None = None
        self.online_sent: int | None = None
        # Open sockets across processes minus this process's own, as last read.
        self.online_base: int | None = None
        self.online_read_at = 0.0
        self.online_reading: asyncio.Future | None = None
        # The settings players were last told (or saw in their hello).
        self.settings: tuple | None = None
        # One frame at a time: a frame sent while another is part-way through
        # its sockets would otherwise reach them in different orders.
        self.sending = asyncio.Lock()
        self.joining = asyncio.Lock()

    async def start(self) -> None:
        # Join before reading the seq: anything committed after the read is
        # then certain to arrive through the group.
        # Redis down: sockets still open and play goes on; this canvas's
        # changes come from the database (_watch_forever) until the layer is
        # back, when the next rejoin subscribes.
        await self._rejoin_logged()
        state = await database_sync_to_async(selectors.canvas_state)(
            canvas_id=self.canvas_id
        )
        self.last_seq, self.settings = state.seq, state.settings
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._receive_forever()),
            loop.create_task(self._tick_forever()),
            loop.create_task(self._watch_forever()),
        ]

    async def online_count(self, max_age: float = ONLINE_FRESH_SECONDS) -> int:
        """Open sockets on the canvas across processes.

        For a new socket, read at most every ONLINE_FRESH_SECONDS and adjusted
        by this process's own joins and leaves since: in a storm of handshakes,
        counting the table again for every new socket queued thousands of
        growing counts ahead of everything else. The heartbeat reads afresh.
        """
        stale = time.monotonic() - self.online_read_at >= max_age
        if self.online_base is None or stale:
            if self.online_reading is None or self.online_reading.done():
                self.online_reading = asyncio.ensure_future(self._read_online())
            await asyncio.shield(self.online_reading)
        return len(self.listeners) + max(0, self.online_base)

    async def _read_online(self) -> None:
        local = len(self.listeners)
        count = await _upkeep(selectors.connections_online)(canvas_id=self.canvas_id)
        self.online_base, self.online_read_at = count - local, time.monotonic()

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()

    def join(self, listener: Listener) -> int:
        """Add a socket; return the seq its `hello` must carry (no await here)."""
        if listener not in self.listeners:
            metrics.CONNECTIONS.inc()
        self.listeners.add(listener)
        wire = sockets.daphne_socket(listener)
        self.wires[listener], self.roads[listener] = wire, sockets.road(wire)
        self.online_sent = None  # its hello's count may differ: resend next beat
        return self.last_seq

    def leave(self, listener: Listener) -> None:
        if listener in self.listeners:
            metrics.CONNECTIONS.dec()
        self.listeners.discard(listener)
        self.wires.pop(listener, None)
        self.roads.pop(listener, None)

    async def rejoin_group(self) -> None:
        """Join the canvas's group, or refresh the membership (a restarted
        Redis has forgotten it); first subscribe, if the layer was down.

        One at a time (the period's watch and the heartbeat both call it), so
        a Redis that hangs and comes back cannot leave two subscriptions; and
        bounded, so a Redis that does not answer cannot hold up the database
        refill or the heartbeat that follow."""
        async with self.joining:
            await asyncio.wait_for(self._join(), LAYER_TIMEOUT)

    def rejoin_soon(self) -> None:
        """Rejoin in the background, unless a rejoin is already under way: a
        Redis that hangs must not hold up the database refill that follows."""
        if not self.joining.locked():
            _in_background(self._rejoin_logged())

    async def _rejoin_logged(self) -> None:
        try:
            await self.rejoin_group()
        except Exception as error:
            broadcast.layer_error_count()
            log.warning(
                "group join failed (%r); reading changes from the database"
                " until a rejoin works",
                error,
            )

    async def _join(self) -> None:
        if not self.channel:
            self.channel = await self.layer.new_channel("hub.")
        await self.layer.group_add(broadcast.group_name(self.canvas_id), self.channel)

    async def _receive_forever(self) -> None:
        while True:
            if not self.channel:  # not subscribed yet: the layer was down
                await asyncio.sleep(settings.PLACE_GAP_TIMEOUT)
                continue
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                broadcast.layer_error_count()
                log.warning("channel layer receive failed; retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            try:
                await self.handle(message)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad message must not end the receiving
                log.warning("layer message failed: %r", message, exc_info=True)

    async def handle(self, message: dict) -> None:
        if message.get("type") == broadcast.MSG_PIXELS:
            self.accept(message["updates"], message.get("sent_at"))
        elif message.get("type") == broadcast.MSG_CANVAS:
            await self.canvas_changed()
        elif message.get("type") == broadcast.MSG_PLAYER:
            # Its own task: a database read must not hold up pixel frames.
            _in_background(self.player_changed(message["player_id"]))

    async def canvas_changed(self) -> None:
        """Tell every socket the canvas's new settings: one read, one frame."""
        try:
            state = await database_sync_to_async(selectors.canvas_state)(
                canvas_id=self.canvas_id
            )
        except Exception:
            log.warning("canvas re-read failed", exc_info=True)
            return
        await self.settings_seen(state)

    async def player_changed(self, player_id: int) -> None:
        """A moderator banned or unbanned a player: tell that player's sockets
        here (placements check the ban in the database either way)."""
        theirs = [
            listener
            for listener in self.listeners
            if getattr(listener, "player_id", None) == player_id
        ]
        if not theirs:
            return
        try:
            ban = await database_sync_to_async(selectors.player_ban)(
                player_id=player_id
            )
        except Exception:
            log.warning("ban re-read failed", exc_info=True)
            return
        if ban is None:
            frame = protocol.unbanned_frame()
        else:
            frame = protocol.banned_frame(until=ban[0], reason=ban[1])
        for listener in theirs:
            await listener.deliver(frame)

    async def settings_seen(self, state: selectors.CanvasState) -> None:
        """Send a `canvas` frame if the settings differ from what players know.

        Called on the layer's notice and on every period's poll, so a change
        made where the notice cannot reach (a management command beside the
        in-memory layer, a notice lost with Redis) still arrives within
        PLACE_GAP_TIMEOUT, and never twice.
        """
        if state.settings == self.settings:
            return
        self.settings = state.settings
        cooldown, is_open, width, height = state.settings
        await self.send_all(
            protocol.canvas_frame(
                cooldown_seconds=cooldown, open_=is_open, width=width, height=height
            )
        )

    def accept(self, updates: list, sent_at: float | None = None) -> None:
        if updates and self.oldest_pending is None:
            self.oldest_pending = sent_at or time.time()
        added = False
        for seq, x, y, color in updates:
            if seq > self.last_seq:
                self.pending[seq] = (seq, x, y, color)
                added = True
        if added:
            self.wake.set()

    def take_ready(self) -> list[Update]:
        """Pop the run of pending changes that follows last_seq without a gap."""
        ready = []
        while self.last_seq + 1 in self.pending:
            self.last_seq += 1
            ready.append(self.pending.pop(self.last_seq))
        return ready

    async def _tick_forever(self) -> None:
        next_at = 0.0
        while True:
            # Sleep until changes arrive: an idle canvas costs no wake-ups. Then
            # keep flushes tick_seconds apart, counted from each flush's start
            # (a busy hub still sends ~1/tick_seconds frames a second), so a lone
            # placement goes out at once and a busy canvas once per tick; or
            # further apart when the writes alone would take over WRITE_SHARE
            # of the loop.
            await self.wake.wait()
            self.wake.clear()
            wait = next_at - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.last_seq + 1 not in self.pending:
                # Only changes after a gap (another process's commit is still on
                # its way): nothing to send, so this does not use up the tick.
                continue
            started = time.perf_counter()
            busy = 0.0
            try:
                busy = await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("hub flush failed")
            elapsed = time.perf_counter() - started
            # A process with more sockets than it can write 10 frames a second
            # to sends fewer, bigger frames instead of starving everything else
            # on its loop (placements, the layer, other canvases). Only the time
            # the writes held the loop counts, not awaited (ASGI) sends; and the
            # budget is the process's: every busy canvas's last frame counts, so
            # that together their writes stay within WRITE_SHARE.
            self.last_busy, self.last_flush = busy, started
            total = busy + registry.others_busy(self, started)
            next_at = started + max(self.tick_seconds, total / WRITE_SHARE)
            metrics.TICK_SECONDS.observe(elapsed)

    async def flush(self) -> float:
        """Send the changes that are ready; return the seconds it held the loop."""
        ready = self.take_ready()
        if not ready:
            return 0.0
        if self.oldest_pending is not None:
            metrics.LAG_SECONDS.observe(max(0.0, time.time() - self.oldest_pending))
        self.oldest_pending = time.time() if self.pending else None
        return await self.send_all(protocol.pixels_frame(ready))

    async def send_all(self, frame: str) -> float:
        """Write one frame to every socket: framed once, then a buffer append each.

        Returns the seconds the writes held the event loop (awaited sends and
        the wait for an earlier frame excluded).
        """
        # The sockets are those of this moment, taken before any wait: one that
        # joins later has this frame's changes in its hello, not in a frame.
        targets = list(self.listeners)
        async with self.sending:
            started = time.perf_counter()
            awaited = 0.0
            prepared = None
            limit = settings.PLACE_SLOW_CLIENT_BYTES
            roads = self.roads
            # No yielding between sockets: the frame goes out in one loop turn.
            # (Slices of 250 or 500 sockets with a yield between them measured
            # worse: p99 0.32-0.35 s against 0.25-0.27 s at 5,000 watchers.)
            for listener in targets:
                if listener not in self.listeners:
                    continue  # left while an ASGI send below was awaited
                # Most sockets: open, ready, nothing queued. Straight to the kernel.
                road = roads.get(listener)
                if road is not None and listener.ready:
                    if prepared is None:
                        prepared = PreparedMessage(frame.encode(), False, False, True)
                    if sockets.send_ready(road, prepared.payloadHybi):
                        continue
                wire = self.wires.get(listener)
                try:
                    if wire is None or not getattr(listener, "ready", False):
                        before = time.perf_counter()
                        try:
                            await asyncio.wait_for(
                                listener.deliver(frame), SLOW_ABORT_SECONDS
                            )
                        finally:
                            awaited += time.perf_counter() - before
                        continue
                    if prepared is None:
                        prepared = PreparedMessage(frame.encode(), False, False, True)
                    if not sockets.write(wire, prepared, limit):
                        self._close_slow(listener, wire)
                except TimeoutError:
                    self._close_slow(listener)
                except Exception:
                    log.debug(
                        "dropping a listener that failed to receive", exc_info=True
                    )
                    self._drop(listener, wire)
            return time.perf_counter() - started - awaited

    def _drop(self, listener: Listener, wire: WebSocketProtocol | None) -> None:
        """Stop feeding a socket that failed, and end it: an open socket that
        gets nothing would be out of step without knowing it."""
        self.leave(listener)
        if wire is not None:
            sockets.abort_if_open(wire)
        else:
            _close_later(listener, protocol.CLOSE_UNAVAILABLE)

    def _close_slow(
        self, listener: Listener, wire: WebSocketProtocol | None = None
    ) -> None:
        """Stop feeding a socket that fell behind; close it so it resyncs.

        `wire`: daphne's socket, whose unsent bytes passed the limit. Without
        one, an ASGI send that has not returned in SLOW_ABORT_SECONDS: every
        frame of the canvas waits behind it, so it must not hold them.
        """
        self.leave(listener)
        metrics.SLOW_CLIENTS.inc()
        log.info("event=slow_client_closed peer=%s", wire.peer if wire else "asgi")
        if wire is None:
            _close_later(listener, CLOSE_TOO_SLOW)
            return
        wire.sendClose(code=CLOSE_TOO_SLOW, reason="too slow: reconnect and refetch")
        # The close frame queues behind the backlog; a client that reads nothing
        # never sees it, so drop the TCP connection if it lingers.
        asyncio.get_running_loop().call_later(
            SLOW_ABORT_SECONDS, sockets.abort_if_open, wire
        )

    async def _watch_forever(self) -> None:
        """Refill from the database whatever has been missing for a whole period.

        Covers lost layer messages (Redis restart, a process dying between
        commit and publish): the database is the truth, the layer only a fast path.
        """
        while True:
            await asyncio.sleep(settings.PLACE_GAP_TIMEOUT)
            # Rejoining is cheap and idempotent; doing it every period means
            # a Redis restart (which forgets groups) costs seconds, not hours.
            self.rejoin_soon()
            try:
                await self.check_gaps()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("gap check failed; will retry", exc_info=True)

    async def check_gaps(self) -> None:
        target = self.watch_target
        if target is not None and self.last_seq < target:
            missing = await database_sync_to_async(selectors.changes_between)(
                canvas_id=self.canvas_id, after=self.last_seq, upto=target
            )
            log.info("refilled %d changes from the database", len(missing))
            self.accept(missing)
            await self.flush()
        state = await database_sync_to_async(selectors.canvas_state)(
            canvas_id=self.canvas_id
        )
        self.watch_target = state.seq
        await self.settings_seen(state)


class Registry:
    """The hubs of this process, bound to the event loop that runs them."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hubs: dict[int, Hub] = {}
        self.starting: dict[int, asyncio.Future] = {}
        self.heartbeat: asyncio.Task | None = None
        # Channel names of this process's sockets whose rows may exist: from
        # the moment a row may be written until it is deleted (consumers).
        self.held: set[str] = set()
        # What the heartbeat needs to write a held socket's row again, from
        # the moment it was admitted (consumers).
        self.rows: dict[str, services.RowFields] = {}
        # Stopping: sockets leave their rows to the next start's sweep rather
        # than delete them one by one while daphne waits for every task.
        self.closing = False

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            # A new loop (tests start one per test): the old hubs died with theirs.
            for hub in self.hubs.values():
                hub.stop()
            self.loop, self.hubs, self.starting = loop, {}, {}
            broadcast.local_hubs.clear()
            broadcast.outbox_start()
            self.heartbeat = loop.create_task(self._heartbeat_forever())

    async def hub(self, canvas_id: int) -> Hub:
        self._bind()
        if canvas_id in self.hubs:
            return self.hubs[canvas_id]
        if canvas_id not in self.starting:
            self.starting[canvas_id] = asyncio.ensure_future(self._start(canvas_id))
        return await asyncio.shield(self.starting[canvas_id])

    async def _start(self, canvas_id: int) -> Hub:
        hub = Hub(canvas_id)
        try:
            await hub.start()
        except BaseException:
            self.starting.pop(canvas_id, None)
            raise
        self.hubs[canvas_id] = hub
        # This process's own commits reach it straight from the outbox.
        broadcast.local_hubs[canvas_id] = hub.accept
        return hub

    def others_busy(self, hub: Hub, now: float) -> float:
        """The last frame's write time of this process's other hubs that sent
        one within the last second (an idle canvas costs the budget nothing)."""
        return sum(
            other.last_busy
            for other in self.hubs.values()
            if other is not hub and now - other.last_flush < BUSY_WINDOW
        )

    async def _heartbeat_forever(self) -> None:
        await _upkeep(sweep_dead_local_servers)()
        while True:
            await asyncio.sleep(settings.PLACE_HEARTBEAT_SECONDS)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("heartbeat failed; will retry", exc_info=True)

    async def beat(self) -> None:
        restored = await _upkeep(services.connections_heartbeat)(
            server=SERVER_ID, channel_names=list(self.held), rows=dict(self.rows)
        )
        if restored:
            log.warning("wrote %d swept rows of open sockets again", restored)
        await _upkeep(services.connections_sweep)(
            stale_seconds=settings.PLACE_CONNECTION_STALE_SECONDS
        )
        for hub in list(self.hubs.values()):
            hub.rejoin_soon()
            count = await hub.online_count(max_age=0)
            # Only a changed count goes out: an idle canvas costs no per-socket
            # work, and a new socket gets the count with its hello.
            if count != hub.online_sent:
                hub.online_sent = count
                await hub.send_all(protocol.online_frame(count))


def sweep_dead_local_servers() -> None:
    """At start-up, drop rows of processes on this host that no longer exist."""
    from .models import Connection

    host = socket.gethostname()
    dead = []
    servers = Connection.objects.filter(server__startswith=host + ":")
    for server in servers.values_list("server", flat=True).distinct():
        pid = int(server.split(":")[1])
        if server != SERVER_ID and not _pid_alive(pid):
            dead.append(server)
    services.connections_sweep(
        stale_seconds=settings.PLACE_CONNECTION_STALE_SECONDS, dead_servers=dead
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


registry = Registry()
