"""canvas/dbpool.py: a pool whose idle connections all died hands out a
working one at once, not one dead connection per growing wait."""

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from psycopg_pool import PoolTimeout

pytestmark = pytest.mark.django_db(transaction=True)


def terminate_all_but(keep: set[int]) -> int:
    """End every other backend of the test database, as a failover would."""
    params = connection.get_connection_params()
    params["autocommit"] = True
    with psycopg.connect(**params) as admin:
        keep = keep | {admin.info.backend_pid}
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND NOT pid = ANY(%s)"
            " AND backend_type = 'client backend'",
            [list(keep)],
        ).fetchall()
    return len(rows)


def test_after_every_idle_connection_died_the_next_checkout_works():
    if connection.vendor != "postgresql" or not settings.PLACE_DB_POOL_SIZE:
        pytest.skip("a PostgreSQL connection pool")
    connection.ensure_connection()  # this thread's own, kept out of the cut
    pool = connection.pool
    taken = []
    while True:  # every free slot filled with a live connection, then idle
        try:
            taken.append(pool.getconn(timeout=0.5))
        except PoolTimeout:
            break
    for conn in taken:
        pool.putconn(conn)
    assert len(taken) >= 3, "too few idle connections to show the waits"
    assert terminate_all_but({connection.connection.info.backend_pid}) >= 3
    # psycopg_pool alone: the first dead connection costs nothing, the second
    # a 1 s wait, the third 2 s more, so 1.5 s ran out on dead connections.
    conn = pool.getconn(timeout=1.5)
    try:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        pool.putconn(conn)
