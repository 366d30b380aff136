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
from typing import Protocol

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from . import broadcast, protocol, selectors, services
from .protocol import Update

log = logging.getLogger("canvas.hub")

SERVER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Listener(Protocol):
    async def deliver(self, frame: str) -> None: ...

    async def canvas_updated(self) -> None: ...


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
        self.last_tick_ms = 0.0

    async def start(self) -> None:
        self.channel = await self.layer.new_channel("hub.")
        # Join before reading the seq: anything committed after the read is
        # then certain to arrive through the group.
        await self.layer.group_add(broadcast.group_name(self.canvas_id), self.channel)
        self.last_seq = await database_sync_to_async(selectors.canvas_seq)(
            canvas_id=self.canvas_id
        )
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._receive_forever()),
            loop.create_task(self._tick_forever()),
            loop.create_task(self._watch_forever()),
        ]

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()

    def join(self, listener: Listener) -> int:
        """Add a socket; return the seq its `hello` must carry (no await here)."""
        self.listeners.add(listener)
        return self.last_seq

    def leave(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    async def rejoin_group(self) -> None:
        """Refresh group membership before the layer's group expiry drops it."""
        await self.layer.group_add(broadcast.group_name(self.canvas_id), self.channel)

    async def _receive_forever(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                broadcast.layer_errors += 1
                log.warning("channel layer receive failed; retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            if message.get("type") == broadcast.MSG_PIXELS:
                self.accept(message["updates"])
            elif message.get("type") == broadcast.MSG_CANVAS:
                for listener in list(self.listeners):
                    await listener.canvas_updated()

    def accept(self, updates: list) -> None:
        for seq, x, y, color in updates:
            if seq > self.last_seq:
                self.pending[seq] = (seq, x, y, color)

    def take_ready(self) -> list[Update]:
        """Pop the run of pending changes that follows last_seq without a gap."""
        ready = []
        while self.last_seq + 1 in self.pending:
            self.last_seq += 1
            ready.append(self.pending.pop(self.last_seq))
        return ready

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            started = time.perf_counter()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("hub flush failed")
            self.last_tick_ms = (time.perf_counter() - started) * 1000

    async def flush(self) -> None:
        ready = self.take_ready()
        if ready:
            await self.send_all(protocol.pixels_frame(ready))

    async def send_all(self, frame: str) -> None:
        for listener in list(self.listeners):
            try:
                await listener.deliver(frame)
            except Exception:
                log.debug("dropping a listener that failed to receive", exc_info=True)
                self.listeners.discard(listener)

    async def _watch_forever(self) -> None:
        """Refill from the database whatever has been missing for a whole period.

        Covers lost layer messages (Redis restart, a process dying between
        commit and publish): the database is the truth, the layer only a fast path.
        """
        while True:
            await asyncio.sleep(settings.PLACE_GAP_TIMEOUT)
            try:
                # Rejoining is cheap and idempotent; doing it every period means
                # a Redis restart (which forgets groups) costs seconds, not hours.
                await self.rejoin_group()
            except asyncio.CancelledError:
                raise
            except Exception:
                broadcast.layer_errors += 1
                log.warning("group rejoin failed; will retry", exc_info=True)
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
        self.watch_target = await database_sync_to_async(selectors.canvas_seq)(
            canvas_id=self.canvas_id
        )


class Registry:
    """The hubs of this process, bound to the event loop that runs them."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hubs: dict[int, Hub] = {}
        self.starting: dict[int, asyncio.Future] = {}
        self.heartbeat: asyncio.Task | None = None

    def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            # A new loop (tests start one per test): the old hubs died with theirs.
            for hub in self.hubs.values():
                hub.stop()
            self.loop, self.hubs, self.starting = loop, {}, {}
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
        return hub

    async def _heartbeat_forever(self) -> None:
        await database_sync_to_async(sweep_dead_local_servers)()
        while True:
            await asyncio.sleep(settings.PLACE_HEARTBEAT_SECONDS)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("heartbeat failed; will retry", exc_info=True)

    async def beat(self) -> None:
        await database_sync_to_async(services.connections_heartbeat)(server=SERVER_ID)
        await database_sync_to_async(services.connections_sweep)(
            stale_seconds=settings.PLACE_CONNECTION_STALE_SECONDS
        )
        for hub in list(self.hubs.values()):
            await hub.rejoin_group()
            count = await database_sync_to_async(selectors.connections_online)(
                canvas_id=hub.canvas_id
            )
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
