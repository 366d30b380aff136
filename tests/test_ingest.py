"""Group commit (canvas/ingest.py): many placements per transaction, none unsafe."""

import asyncio
import os
import re
import socket
import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import (
    DatabaseError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from canvas import exceptions as exc
from canvas import ingest, selectors, services
from canvas.models import Cooldown, Placement, Player

from .conftest import adb, connect, receive_type, send, session_key_create

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_layer"),
]


@pytest.fixture
def canvas(make_canvas, settings):
    # A wide window so every submission of a test lands in the same batch.
    settings.PLACE_INGEST_WINDOW = 0.2
    return make_canvas(slug="ingest", width=200, height=130, cooldown=300)


def players(count: int) -> list[int]:
    return [Player.objects.create(name=f"p{i}").pk for i in range(count)]


def fails(message: str):
    """A stand-in that raises the database error a lost connection would."""

    def broken(*args, **kwargs):
        raise OperationalError(message)

    return broken


async def submit_all(requests: list[ingest.PlaceRequest]) -> list:
    return await asyncio.gather(
        *(ingest.batcher.submit(r) for r in requests), return_exceptions=True
    )


async def test_racing_submissions_by_one_player_admit_exactly_one(canvas):
    (player,) = await adb(players)(1)
    before = ingest.batcher.batches
    results = await submit_all(
        [ingest.PlaceRequest(canvas.pk, player, x, 0, 3) for x in range(8)]
    )
    accepted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, exc.PlaceError)]
    assert len(accepted) == 1 and len(refused) == 7
    assert {r.code for r in refused} == {"cooldown"}
    assert all(r.retry_after > 299 for r in refused)
    assert ingest.batcher.batches == before + 1
    assert await adb(Placement.objects.count)() == 1


async def test_without_a_cooldown_one_players_requests_in_a_batch_all_go_in(
    canvas,
):
    """Cooldown 0: two tabs of one player placing together are not refused
    as if there were a cooldown to wait for."""
    await adb(services.canvas_create_or_update)(slug=canvas.slug, cooldown_seconds=0)
    (player,) = await adb(players)(1)
    before = ingest.batcher.batches
    results = await submit_all(
        [ingest.PlaceRequest(canvas.pk, player, x, 0, 3) for x in range(8)]
    )
    assert not [r for r in results if isinstance(r, Exception)]
    assert ingest.batcher.batches == before + 1
    assert sorted(r.seq for r in results) == list(range(1, 9))
    assert await adb(Placement.objects.count)() == 8


async def test_a_batch_takes_consecutive_seqs_in_one_transaction(canvas):
    ids = await adb(players)(40)
    before = ingest.batcher.batches
    results = await submit_all(
        [
            ingest.PlaceRequest(canvas.pk, p, i, i % 130, i % 16)
            for i, p in enumerate(ids)
        ]
    )
    seqs = [r.seq for r in results]
    assert seqs == list(range(seqs[0], seqs[0] + 40)) and seqs[0] == 1
    assert ingest.batcher.batches == before + 1
    await adb(canvas.refresh_from_db)()
    assert canvas.seq == 40
    board = await adb(selectors.board_assemble)(canvas)
    assert all(board[(i % 130) * 200 + i] == i % 16 for i in range(40))


async def test_each_refusal_keeps_its_own_code_inside_a_batch(canvas):
    ids = await adb(players)(3)
    results = await submit_all(
        [
            ingest.PlaceRequest(canvas.pk, ids[0], 500, 0, 1),
            ingest.PlaceRequest(canvas.pk, ids[1], 0, 0, 99),
            ingest.PlaceRequest(canvas.pk, None, 0, 0, 1),
            ingest.PlaceRequest(canvas.pk, ids[2], 5, 5, 5),
        ]
    )
    codes = [getattr(r, "code", "ok") for r in results]
    assert codes == ["out_of_bounds", "invalid_color", "login_required", "ok"]
    assert results[3].seq == 1


def players_of_every_kind(now):
    """A banned player, an old one whose ban ran out, one since deleted, a new
    account and an old one, in that order."""
    banned, pardoned, gone = players(3)
    Player.objects.filter(pk=banned).update(banned_until=now + timedelta(hours=1))
    Player.objects.filter(pk=pardoned).update(
        banned_until=now - timedelta(hours=1), created_at=now - timedelta(days=2)
    )
    Player.objects.filter(pk=gone).delete()
    users = get_user_model().objects
    fresh = services.player_for_user(user=users.create_user("fresh", password="x"))
    old_user = users.create_user("veteran", password="x")
    old_user.date_joined = now - timedelta(days=2)
    old_user.save()
    veteran = services.player_for_user(user=old_user)
    return [banned, pardoned, gone, fresh.pk, veteran.pk]


async def test_players_banned_gone_or_too_new_are_refused_in_a_batch(canvas, settings):
    settings.PLACE_MIN_ACCOUNT_AGE = 3600
    ids = await adb(players_of_every_kind)(timezone.now())
    before = ingest.batcher.batches
    results = await submit_all(
        [ingest.PlaceRequest(canvas.pk, p, i, 0, 1) for i, p in enumerate(ids)]
    )
    assert ingest.batcher.batches == before + 1
    codes = [getattr(r, "code", "ok") for r in results]
    assert codes == ["banned", "ok", "login_required", "cooldown", "ok"]
    assert results[3].message == exc.MSG_ACCOUNT_TOO_NEW
    assert 3590 < results[3].retry_after <= 3600
    placed = Placement.objects.order_by("seq").values_list("player_id", flat=True)
    assert await adb(list)(placed) == [ids[1], ids[4]]


async def test_without_an_age_minimum_new_accounts_place_at_once(canvas):
    ids = await adb(players_of_every_kind)(timezone.now())
    results = await submit_all(
        [ingest.PlaceRequest(canvas.pk, p, i, 0, 1) for i, p in enumerate(ids)]
    )
    codes = [getattr(r, "code", "ok") for r in results]
    assert codes == ["banned", "ok", "login_required", "ok", "ok"]


def refusal_by_one_placement(canvas, request) -> str:
    try:
        with transaction.atomic():
            services.placement_create(
                canvas_id=canvas.pk,
                player_id=request.player_id,
                x=request.x,
                y=request.y,
                color=request.color,
            )
            raise transaction.TransactionManagementError  # keep nothing
    except exc.PlaceError as error:
        return error.code
    except transaction.TransactionManagementError:
        return "ok"


@pytest.mark.parametrize("is_open", [True, False])
async def test_a_batch_refuses_exactly_as_one_placement_would(
    make_canvas, settings, is_open
):
    settings.PLACE_MIN_ACCOUNT_AGE = 3600
    canvas = await adb(make_canvas)(slug="same", width=8, height=8, cooldown=0)
    await adb(type(canvas).objects.filter(pk=canvas.pk).update)(is_open=is_open)
    await adb(canvas.refresh_from_db)()
    ids = await adb(players_of_every_kind)(timezone.now())
    requests = [
        ingest.PlaceRequest(canvas.pk, player, x, 0, color)
        for player in [None, *ids]
        for x, color in [(1, 1), (8, 1), (1, 16), (-1, -1)]
    ]
    expected = [await adb(refusal_by_one_placement)(canvas, r) for r in requests]
    results = await submit_all(requests)
    # Each player has one valid request, so no cooldown within the batch.
    codes = [getattr(r, "code", "ok") for r in results]
    assert codes == expected
    assert "ok" in codes if is_open else "canvas_closed" in codes


async def test_cooldown_still_holds_across_batches(canvas):
    (player,) = await adb(players)(1)
    first = await ingest.batcher.submit(ingest.PlaceRequest(canvas.pk, player, 1, 1, 2))
    with pytest.raises(exc.PlaceError) as refused:
        await ingest.batcher.submit(ingest.PlaceRequest(canvas.pk, player, 2, 2, 2))
    assert first.seq == 1 and refused.value.code == "cooldown"


async def test_one_batch_answers_submitters_on_every_event_loop(canvas):
    """Results go back once per loop per batch: each submitter still gets its
    own, on its own loop, and one whose socket went (cancelled) is skipped
    without stopping the rest."""
    ids = await adb(players)(6)
    before = ingest.batcher.batches
    elsewhere: list = []

    def other_loop() -> None:
        async def place() -> list:
            return await submit_all(
                [
                    ingest.PlaceRequest(canvas.pk, p, 50 + i, 1, 5)
                    for i, p in enumerate(ids[3:])
                ]
            )

        elsewhere.extend(asyncio.run(place()))

    thread = threading.Thread(target=other_loop)
    thread.start()
    gone = asyncio.ensure_future(
        ingest.batcher.submit(ingest.PlaceRequest(canvas.pk, ids[0], 9, 9, 1))
    )
    here = asyncio.ensure_future(
        submit_all(
            [ingest.PlaceRequest(canvas.pk, p, i, 0, 4) for i, p in enumerate(ids[1:3])]
        )
    )
    await asyncio.sleep(0.05)  # queued, the batch's window still open
    gone.cancel()
    mine = await here
    await asyncio.get_running_loop().run_in_executor(None, thread.join)
    assert ingest.batcher.batches == before + 1
    assert [(r.seq > 0) for r in mine] == [True, True]
    assert [(r.seq > 0) for r in elsewhere] == [True, True, True]
    seqs = sorted(r.seq for r in [*mine, *elsewhere])
    # The cancelled one was committed too (its socket just never hears of it).
    assert len(seqs) == 5 and await adb(Placement.objects.count)() == 6
    assert gone.cancelled()


async def test_a_database_failure_fails_the_whole_batch_and_writes_nothing(
    canvas, monkeypatch
):
    ids = await adb(players)(5)
    board_before = await adb(selectors.board_assemble)(canvas)

    # Fails after the cooldowns, seqs and chunks of the batch were written.
    monkeypatch.setattr(ingest, "_placements_insert", fails("disk on fire"))
    results = await submit_all(
        [ingest.PlaceRequest(canvas.pk, p, i, 0, 4) for i, p in enumerate(ids)]
    )
    assert all(isinstance(r, DatabaseError) for r in results)
    await adb(canvas.refresh_from_db)()
    assert canvas.seq == 0
    assert await adb(Placement.objects.count)() == 0
    assert await adb(selectors.board_assemble)(canvas) == board_before
    # The cooldowns taken inside the failed transaction were rolled back too.
    taken = Cooldown.objects.filter(canvas=canvas, next_at__gt="2001-01-01T00:00Z")
    assert await adb(taken.count)() == 0
    monkeypatch.undo()
    again = await ingest.batcher.submit(ingest.PlaceRequest(canvas.pk, ids[0], 0, 0, 4))
    assert again.seq == 1


def ingest_log(monkeypatch, caplog) -> None:
    """Capture canvas.ingest's lines (the canvas loggers do not propagate)."""
    monkeypatch.setattr(ingest.log, "handlers", [*ingest.log.handlers, caplog.handler])


def on_next_commit(monkeypatch, action) -> list:
    """Run `action(wrapper, real_commit)` instead of the ingest thread's next
    COMMIT (every other commit goes through); the list fills once it has."""
    wrapper = type(connection._connections["default"])
    real = wrapper._commit
    done: list = []

    def instead(self):
        if threading.current_thread().name != "canvas-ingest" or done:
            return real(self)
        done.append(True)
        return action(self, real)

    monkeypatch.setattr(wrapper, "_commit", instead)
    return done


def commit_that_fails(monkeypatch, *, after_commit: bool) -> list:
    """The ingest thread's next COMMIT raises as if its connection died at that
    moment: after the database committed (`after_commit`) or before."""

    def fail(self, real) -> None:
        if after_commit:
            real(self)
        raise OperationalError("server closed the connection unexpectedly")

    return on_next_commit(monkeypatch, fail)


async def test_a_batch_that_committed_although_its_commit_failed_is_accepted(
    canvas, settings, monkeypatch
):
    """The answer after a failed COMMIT is what the database holds: the
    batch's rows are there, so its players get `accepted` (not `unavailable`
    for placements that are on the board) and watchers see them at once."""
    settings.PLACE_GAP_TIMEOUT = 30  # so only the publish can bring them
    watcher, hello = await connect("ingest")
    ids = await adb(players)(3)
    failed = commit_that_fails(monkeypatch, after_commit=True)
    results = await submit_all(
        [ingest.PlaceRequest(canvas.pk, p, i, 2, 6) for i, p in enumerate(ids)]
    )
    assert failed
    assert [r.seq for r in results] == [hello["seq"] + 1, hello["seq"] + 2, 3]
    assert await adb(Placement.objects.count)() == 3
    frame = await receive_type(watcher, "pixels", timeout=3)
    assert frame["updates"] == [[1, 0, 2, 6], [2, 1, 2, 6], [3, 2, 2, 6]]
    await watcher.disconnect()


async def test_a_batch_whose_commit_failed_before_committing_is_unavailable(
    canvas, monkeypatch, caplog
):
    ingest_log(monkeypatch, caplog)
    ids = await adb(players)(3)
    failed = commit_that_fails(monkeypatch, after_commit=False)
    results = await submit_all(
        [ingest.PlaceRequest(canvas.pk, p, i, 2, 6) for i, p in enumerate(ids)]
    )
    assert failed
    assert all(isinstance(r, DatabaseError) for r in results)
    assert await adb(Placement.objects.count)() == 0
    assert "had committed" not in caplog.text


async def test_a_failed_commit_that_cannot_be_looked_up_says_it_may_have_committed(
    canvas, monkeypatch, caplog
):
    ingest_log(monkeypatch, caplog)
    ids = await adb(players)(2)
    commit_that_fails(monkeypatch, after_commit=True)

    monkeypatch.setattr(ingest, "committed_anyway", fails("connection refused"))
    results = await submit_all(
        [ingest.PlaceRequest(canvas.pk, p, i, 2, 6) for i, p in enumerate(ids)]
    )
    assert all(isinstance(r, DatabaseError) for r in results)
    assert "it may have committed" in caplog.text


async def test_a_retried_batch_whose_commit_failed_but_committed_is_accepted(
    canvas, monkeypatch, caplog
):
    """The second run after a cut connection gets the same look after a failed
    COMMIT as the first: committed work is never answered `unavailable`."""
    ingest_log(monkeypatch, caplog)
    ids = await adb(players)(2)
    real = ingest._commit_canvas
    cut: list = []

    def cut_once(*args, **kwargs):
        if not cut:
            cut.append(True)
            raise OperationalError("terminating connection (administrator command)")
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "_commit_canvas", cut_once)
    # What psycopg's closed flag says after a real cut (SQLite has none).
    monkeypatch.setattr(ingest, "_connection_lost", lambda progress, error: True)
    failed = commit_that_fails(monkeypatch, after_commit=True)
    results = await submit_all(
        [ingest.PlaceRequest(canvas.pk, p, i, 2, 6) for i, p in enumerate(ids)]
    )
    assert cut and failed and "running it again" in caplog.text
    assert all(isinstance(r, services.PlacementResult) for r in results)
    assert await adb(Placement.objects.count)() == 2


def pg_terminate(pid: int) -> None:
    """End one backend from outside, as an administrator or a failover would."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])


async def test_a_connection_cut_between_batches_runs_the_next_batch_again(
    canvas, settings, monkeypatch, caplog
):
    """PostgreSQL: the writer keeps its connection between batches; when the
    server ends it, the next batch fails on it before its COMMIT and runs once
    more on a fresh one, and its players get `accepted`."""
    if connection.vendor != "postgresql":
        pytest.skip("a backend to terminate (PostgreSQL)")
    settings.PLACE_INGEST_IDLE_CLOSE = 30  # keep it, as under load
    ingest_log(monkeypatch, caplog)
    ids = await adb(players)(4)
    pids: list = []
    real = ingest._commit_canvas

    def note_pid(*args, **kwargs):
        pids.append(connection.connection.info.backend_pid)
        return real(*args, **kwargs)

    monkeypatch.setattr(ingest, "_commit_canvas", note_pid)
    (first,) = await submit_all([ingest.PlaceRequest(canvas.pk, ids[0], 0, 0, 1)])
    assert isinstance(first, services.PlacementResult)
    await adb(pg_terminate)(pids[0])
    results = await submit_all(
        [ingest.PlaceRequest(canvas.pk, p, i, 3, 6) for i, p in enumerate(ids[1:3])]
    )
    assert all(isinstance(r, services.PlacementResult) for r in results)
    assert "running it again on a fresh one" in caplog.text
    assert pids[-1] != pids[0]
    assert await adb(Placement.objects.count)() == 3
    # Back to giving the connection up when idle, or the writer would hold it
    # for 30 s and the test database could not be dropped after the suite.
    settings.PLACE_INGEST_IDLE_CLOSE = 0.05
    await submit_all([ingest.PlaceRequest(canvas.pk, ids[3], 9, 9, 1)])


def test_a_busy_pool_is_not_taken_for_an_outage():
    """PostgreSQL: with every pooled connection in use (a storm of
    handshakes), the database still answers, so a batch cut from its
    connection is run again rather than answered `unavailable`."""
    if connection.vendor != "postgresql" or connection.pool is None:
        pytest.skip("a connection pool (PostgreSQL)")
    from psycopg_pool import PoolTimeout

    connection.ensure_connection()
    pool = connection.pool
    held = []
    try:
        while True:  # every slot, as the storm's threads would hold them
            try:
                held.append(pool.getconn(timeout=0.5))
            except PoolTimeout:
                break
        assert pool.get_stats()["pool_size"] == pool.max_size
        assert ingest._database_answers()
    finally:
        for conn in held:
            pool.putconn(conn)


def test_a_database_server_that_refuses_connections_does_not_answer(monkeypatch):
    """The probe behind a busy pool: a server that is not there is an
    outage (no retry), one that takes the connection is up."""
    if connection.vendor != "postgresql":
        pytest.skip("the probe connects with psycopg (PostgreSQL)")
    assert ingest._server_answers()
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        closed_port = spare.getsockname()[1]  # nothing listens once closed
    real = connection.get_connection_params
    monkeypatch.setattr(
        connection,
        "get_connection_params",
        lambda: {**real(), "host": "127.0.0.1", "port": closed_port},
    )
    assert not ingest._server_answers()


async def test_the_look_after_a_failed_commit_waits_for_that_commit_to_end(
    canvas, monkeypatch, caplog
):
    """PostgreSQL: the link dies while the server is still committing (here a
    deferred trigger sleeps; in life a slow disk or a synchronous standby).
    The look must not run before the commit is visible: it waits for the
    canvas row the batch holds locked, then finds the rows: `accepted`."""
    if connection.vendor != "postgresql":
        pytest.skip("a COMMIT that runs on after its link died (PostgreSQL)")
    ingest_log(monkeypatch, caplog)
    table = Placement._meta.db_table

    def trigger(install: bool) -> None:
        with connections["default"].cursor() as cursor:
            if install:
                cursor.execute(
                    "CREATE OR REPLACE FUNCTION test_slow_commit() RETURNS trigger"
                    " AS $$ BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$"
                    " LANGUAGE plpgsql"
                )
                cursor.execute(
                    f"CREATE CONSTRAINT TRIGGER test_slow_commit AFTER INSERT ON"
                    f" {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
                    " EXECUTE FUNCTION test_slow_commit()"
                )
            else:
                cursor.execute(f"DROP TRIGGER IF EXISTS test_slow_commit ON {table}")
                cursor.execute("DROP FUNCTION IF EXISTS test_slow_commit()")

    await adb(trigger)(True)
    try:
        (player,) = await adb(players)(1)

        def commit_on_a_link_that_dies(self, real):
            fd = self.connection.pgconn.socket

            def sever() -> None:  # the network goes while the COMMIT runs
                time.sleep(0.3)
                link = socket.socket(fileno=os.dup(fd))
                link.shutdown(socket.SHUT_RDWR)
                link.close()

            threading.Thread(target=sever).start()
            return real(self)

        cut = on_next_commit(monkeypatch, commit_on_a_link_that_dies)
        (result,) = await submit_all([ingest.PlaceRequest(canvas.pk, player, 7, 7, 9)])
        assert cut
        assert isinstance(result, services.PlacementResult), caplog.text
        assert "but had committed" in caplog.text
        assert await adb(Placement.objects.count)() == 1
    finally:
        await adb(trigger)(False)


async def test_the_consumer_answers_unavailable_when_the_batch_fails(
    canvas, anonymous_play, monkeypatch
):
    key = await adb(session_key_create)(seen=True)
    client, _ = await connect("ingest", session_key=key)

    monkeypatch.setattr(ingest, "_placements_insert", fails("gone"))
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 2})
    reply = await receive_type(client, "rejected")
    assert reply["code"] == "unavailable"
    await client.disconnect()


def test_a_batch_locks_its_canvases_in_id_order(make_canvas):
    """Two processes' batches spanning the same canvases cannot deadlock."""
    first = make_canvas(slug="lock-a", cooldown=0)
    second = make_canvas(slug="lock-b", cooldown=0)
    a, b = players(2)
    with CaptureQueriesContext(connection) as queries:
        outcomes = ingest.placements_commit(
            [
                ingest.PlaceRequest(second.pk, a, 1, 1, 2),
                ingest.PlaceRequest(first.pk, b, 1, 1, 3),
            ]
        )
    assert all(isinstance(o, services.PlacementResult) for o in outcomes)
    locked = [
        int(m.group(1))
        for q in queries
        if (m := re.search(r"SET seq = seq \+ \d+ WHERE id = (\d+)", q["sql"]))
    ]
    assert locked == [first.pk, second.pk]


def test_a_resize_between_a_batchs_checks_and_its_lock_is_checked_again(
    make_canvas, monkeypatch
):
    """A shrink that commits while a batch is between its checks and the canvas
    lock: the batch is checked again, so a pixel that no longer exists is
    refused instead of failing the batch or landing outside the board."""
    if connection.vendor != "postgresql":
        pytest.skip("needs a second writer beside an open transaction (PostgreSQL)")
    canvas = make_canvas(slug="shrinking", width=200, height=100, cooldown=0)
    gone, stays = players(2)
    take = ingest._take_set_based
    shrunk = []

    def shrink() -> None:
        services.canvas_create_or_update(slug="shrinking", width=100, height=100)
        connection.close()

    def take_then_shrink(*args, **kwargs):
        winners = take(*args, **kwargs)
        if not shrunk:
            shrunk.append(True)
            thread = threading.Thread(target=shrink)
            thread.start()
            thread.join(30)
        return winners

    monkeypatch.setattr(ingest, "_take_set_based", take_then_shrink)
    outcomes = ingest.placements_commit(
        [
            ingest.PlaceRequest(canvas.pk, gone, 150, 50, 3),
            ingest.PlaceRequest(canvas.pk, stays, 10, 10, 4),
        ]
    )
    assert shrunk
    assert isinstance(outcomes[0], exc.PlaceError)
    assert outcomes[0].code == "out_of_bounds"
    assert isinstance(outcomes[1], services.PlacementResult)
    assert list(Placement.objects.values_list("x", "y", "color")) == [(10, 10, 4)]
    canvas.refresh_from_db()
    assert (canvas.width, canvas.height) == (100, 100)
    assert selectors.pixel_info(canvas=canvas, x=10, y=10).color == 4
