"""After a failover, the pool replaces its dead connections together.

Django checks a pooled PostgreSQL connection as it hands it out
(CONN_HEALTH_CHECKS, psycopg_pool's `check`). When a check fails, psycopg_pool
discards that connection and tries the next one, waiting longer before each
further try: 0 s, then 1 s, then 2 s. After a database restart, a failover or
an administrator's `pg_terminate_backend`, every idle connection in the pool is
dead at once, so each thread's next query waited 3 s or more, and some ran
into the pool's 5 s timeout (`unavailable`) with the database up (an outside
fault probe; docs/reliability.md).

Here a failed check first checks every other idle connection of the pool, which
discards the dead ones and starts their replacements at once; the waiting
thread's next try gets a working connection instead of the next dead one.
"""

import threading

from psycopg_pool import ConnectionPool

_plain_check = ConnectionPool.check_connection
# One sweep at a time in the process: a thread whose check fails while another
# sweeps goes on waiting for its connection as psycopg_pool has it wait. Also
# what keeps the sweep's own checks (pool.check() runs this function on each
# idle connection) from sweeping again.
_sweeping = threading.Lock()


def check_connection(conn) -> None:
    """psycopg_pool's check; on a failure, the pool's other idle connections
    are checked too before the failure goes on to the pool."""
    try:
        _plain_check(conn)
    except Exception:
        _check_idle(getattr(conn, "_pool", None))
        raise


def _check_idle(pool: ConnectionPool | None) -> None:
    """`pool.check()`: every idle connection checked, the dead ones replaced.

    `pool` is the failing connection's own: psycopg_pool marks a connection
    with its pool as it hands it out for the check (None while it is idle in
    the pool, as during `pool.check()` itself).
    """
    if pool is None or not _sweeping.acquire(blocking=False):
        return
    try:
        pool.check()
    finally:
        _sweeping.release()


def install() -> None:
    """Make Django's pool use `check_connection`: Django passes the class's
    `check_connection` to the pool it builds at the first query, so this must
    run before that (AppConfig.ready)."""
    ConnectionPool.check_connection = staticmethod(check_connection)
