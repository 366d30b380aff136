"""A process's `Connection` rows: written by a few threads, deleted in groups.

A new socket's admission (`consumers._admit`: canvas, session, player,
cooldown, then its row) is a handful of short queries, and its time is mostly
spent waiting for the database. On asgiref's one shared database thread each
handshake waited for the one before it, so a storm of clients coming back to
a restarted process got in one round trip after another, and the deletes of a
storm of closing sockets queued the same way (bench/RESULTS.md, connection
storm). Here a few threads admit at once on PostgreSQL (SQLite has one writer
at a time: one thread), and the rows of sockets that close together go in one
statement, on a thread of their own.

A row's delete waits for its socket's admission to finish, however the
socket's task ends: a row being written when its task is killed is deleted
right after. A socket given up while its admission still waits its turn
(daphne killed the handshake) has the admission skip its work.
"""

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from django import db
from django.conf import settings

from . import services

# Admission threads on PostgreSQL: each holds a pooled connection while it
# works, beside the delete thread, asgiref's, the ingest thread and the
# heartbeat's (PLACE_DB_POOL_SIZE, 8 by default).
MAX_THREADS = 3

_admitting: ThreadPoolExecutor | None = None
# Deletes have a thread of their own: queued behind a storm's admissions, the
# rows of closed sockets would go on counting against their address's cap.
_deleting = ThreadPoolExecutor(1, thread_name_prefix="place-presence-delete")


def threads() -> int:
    engine = settings.DATABASES["default"]["ENGINE"]
    if engine.endswith("postgresql") and settings.PLACE_DB_POOL_SIZE:
        return max(1, min(MAX_THREADS, settings.PLACE_DB_POOL_SIZE // 2))
    return 1


def call_in(executor: ThreadPoolExecutor, func, *args, **kwargs) -> asyncio.Future:
    """Start `func` on one of `executor`'s threads; its future, already running.

    The thread's database connection goes back to the pool (or is closed)
    after the call, as with channels' database_sync_to_async: nothing of it
    outlives the call (a test database cannot be dropped while a session is
    open on it). Also the hub's heartbeat thread (canvas/hub.py).
    """
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(executor, partial(_closing, func, *args, **kwargs))


def _closing(func, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    finally:
        db.connections.close_all()


def run(func, *args, **kwargs) -> asyncio.Future:
    """Start `func` on an admission thread; its future, already running.

    Cancelling an await of it does not stop the thread: shield it and keep
    the future for `release`, which waits for it.
    """
    global _admitting
    if _admitting is None:
        _admitting = ThreadPoolExecutor(threads(), thread_name_prefix="place-presence")
    return call_in(_admitting, func, *args, **kwargs)


def release(channel_name: str, after: asyncio.Future | None) -> asyncio.Future:
    """Delete a socket's row once `after` (its admission) has finished.

    A task of its own: cancelling whoever awaits it does not stop the delete.
    """
    return asyncio.ensure_future(_release(channel_name, after))


async def _release(channel_name: str, after: asyncio.Future | None) -> None:
    if after is not None:
        await asyncio.wait([after])  # never raises: the row is written or not
        if not after.cancelled():
            after.exception()  # seen: whatever it was, nobody else awaits it
    await _deletes().delete(channel_name)


class GroupDelete:
    """Deletes rows in groups: whatever queued while the last group ran."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, asyncio.Future]] = []
        self.flushing: asyncio.Task | None = None

    async def delete(self, channel_name: str) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self.waiting.append((channel_name, done))
        if self.flushing is None or self.flushing.done():
            self.flushing = loop.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        while self.waiting:
            group, self.waiting = self.waiting, []
            names = [name for name, _ in group]
            try:
                await call_in(
                    _deleting, services.connections_close, channel_names=names
                )
            except Exception as error:  # each socket's release logs it
                for _, done in group:
                    with contextlib.suppress(asyncio.InvalidStateError):
                        done.set_exception(error)
            else:
                for _, done in group:
                    with contextlib.suppress(asyncio.InvalidStateError):
                        done.set_result(None)


_by_loop: dict[asyncio.AbstractEventLoop, GroupDelete] = {}


def _deletes() -> GroupDelete:
    # One per event loop (tests run one per test); a closed loop's goes.
    loop = asyncio.get_running_loop()
    for old in [old for old in _by_loop if old.is_closed()]:
        del _by_loop[old]
    return _by_loop.setdefault(loop, GroupDelete())


def shutdown() -> None:
    """Wait for the admission and delete threads to finish their work."""
    global _admitting
    if _admitting is not None:
        _admitting.shutdown(wait=True)
        _admitting = None
    _deleting.submit(db.connections.close_all).result()
