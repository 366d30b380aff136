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
import logging
import os
import threading
from collections.abc import Iterator

from django.db import connection

log = logging.getLogger("canvas.ingest")

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


def _descriptor(path: str) -> int | None:
    """The lock file's descriptor, or None if it cannot be opened: then SQLite's
    busy handler alone keeps writers apart (correct, only slower to hand over),
    which beats refusing every placement over a lock file."""
    with _guard:
        if path not in _files:
            try:
                # Read-only is enough for flock; 0o644 lets workers running as
                # other users of the same database share it.
                _files[path] = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
            except OSError as error:
                log.warning(
                    "writers' lock file %s unusable (%s): not used", path, error
                )
                _files[path] = -1
        fd = _files[path]
        return None if fd < 0 else fd


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
    if fd is None:
        yield
        return
    with _local:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
