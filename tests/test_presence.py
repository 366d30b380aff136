"""canvas/presence.py: sockets' rows written on several threads, deleted in groups."""

import asyncio
import threading

import pytest
from django.db import connection

from canvas import presence, services
from canvas.models import Connection

from .conftest import adb, connect

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_layer"),
]


@pytest.fixture
def canvas(make_canvas):
    return make_canvas(slug="test", width=32, height=16, cooldown=300)


async def test_handshakes_are_admitted_side_by_side_on_postgresql(canvas, monkeypatch):
    """A storm of reconnecting clients must not queue one round trip after
    another: two admissions meet inside the admission step at once (on one
    thread, the first would wait forever for the second and break the barrier)."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite has one writer: one admission thread (second pass)")
    from canvas import consumers

    real_admit = consumers._admit
    together = threading.Barrier(2, timeout=10)

    def admit_together(*args, **kwargs):
        together.wait()  # raises BrokenBarrierError if the other never comes
        return real_admit(*args, **kwargs)

    monkeypatch.setattr(consumers, "_admit", admit_together)
    (first, hello1), (second, hello2) = await asyncio.gather(
        connect("test"), connect("test")
    )
    assert hello1["type"] == hello2["type"] == "hello"
    assert await adb(Connection.objects.count)() == 2
    await first.disconnect()
    await second.disconnect()


def test_admission_threads_follow_the_database():
    expected = 1 if connection.vendor != "postgresql" else presence.MAX_THREADS
    assert presence.threads() == expected


async def test_sockets_that_close_together_are_deleted_by_one_statement(
    canvas, monkeypatch
):
    real_close = services.connections_close
    groups: list[list[str]] = []
    first_running = threading.Event()
    let_go = threading.Event()

    def close(*, channel_names):
        groups.append(list(channel_names))
        if len(groups) == 1:
            first_running.set()
            let_go.wait(10)  # the others queue meanwhile
        real_close(channel_names=channel_names)

    monkeypatch.setattr(services, "connections_close", close)
    clients = [(await connect("test"))[0] for _ in range(5)]
    assert await adb(Connection.objects.count)() == 5
    closing = [asyncio.ensure_future(clients[0].disconnect())]
    while not first_running.is_set():
        await asyncio.sleep(0.01)
    closing += [asyncio.ensure_future(c.disconnect()) for c in clients[1:]]
    while len(presence._deletes().waiting) < 4:
        await asyncio.sleep(0.01)
    let_go.set()
    await asyncio.gather(*closing)
    assert [len(group) for group in groups] == [1, 4]
    assert await adb(Connection.objects.count)() == 0


async def test_a_failed_delete_leaves_the_row_to_the_sweep(canvas, monkeypatch):
    from django.db import OperationalError

    def close(*, channel_names):
        raise OperationalError("the database went away")

    monkeypatch.setattr(services, "connections_close", close)
    client, _ = await connect("test")
    await client.disconnect()  # no traceback reaches daphne
    # Not deleted, and no longer refreshed: the stale sweep takes it.
    from canvas.hub import registry

    assert registry.held == set()
    assert await adb(Connection.objects.count)() == 1
