"""SQLite's one write lock, taken in turn by the processes' ingest writers.

SQLite has one writer at a time; a second process's BEGIN IMMEDIATE waits in
SQLite's busy handler, which polls: it sleeps 1, 2, 5, 10 ... up to 100 ms
between tries, so the lock is often free while the next writer still sleeps,
and its players' placements wait that long for nothing. An exclusive `flock`
on a file beside the database is handed to the waiting writer by the kernel
the moment the holder lets go. Only the ingest writers take it (other writers,
rare, still wait in the busy handler); PostgreSQL needs none of this: its
writers wait on each other's row locks and are woken directly.
"""

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator

from django.db import connection

# One descriptor per database file per process. flock is per open file, so
# threads of one process share it under a lock of their own.
_files: dict[str, int] = {}
_guard = threading.Lock()
_local = threading.Lock()


def lock_path(database: str) -> str | None:
    """The lock file beside a SQLite database file; None for an in-memory one."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{database}-writer.lock"


def _descriptor(path: str) -> int:
    with _guard:
        if path not in _files:
            _files[path] = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        return _files[path]


@contextlib.contextmanager
def taken() -> Iterator[None]:
    """Hold the writers' turn on this connection's SQLite database, if any."""
    if connection.vendor != "sqlite":
        yield
        return
    path = lock_path(str(connection.settings_dict["NAME"]))
    if path is None:
        yield
        return
    fd = _descriptor(path)
    with _local:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
