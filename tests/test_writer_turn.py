"""canvas/writer_turn.py: the processes' ingest writers take SQLite's one write
lock in turn, through a lock file the kernel hands over."""

import subprocess
import sys
import threading

import pytest
from django.db import connection

from canvas import ingest, services, writer_turn
from canvas.models import Placement, Player

pytestmark = pytest.mark.django_db(transaction=True)

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_the_lock_file_lies_beside_a_database_file_and_not_for_memory():
    assert writer_turn.lock_path("/srv/place/db.sqlite3") == (
        "/srv/place/db.sqlite3-writer.lock"
    )
    assert writer_turn.lock_path(":memory:") is None
    assert writer_turn.lock_path("file:memdb1?mode=memory&cache=shared") is None


def test_a_batch_waits_for_another_processs_writer_then_commits(make_canvas):
    """Another process holds the turn: the batch neither commits nor fails
    meanwhile; once that process lets go, it commits at once."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's writers only (the first pass)")
    canvas = make_canvas(slug="turns", cooldown=0)
    player = Player.objects.create(name="waits").pk
    path = writer_turn.lock_path(str(connection.settings_dict["NAME"]))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    outcomes: list = []

    def commit() -> None:
        try:
            outcomes.extend(
                ingest.placements_commit(
                    [ingest.PlaceRequest(canvas.pk, player, 1, 2, 3)]
                )
            )
        finally:
            connection.close()

    try:
        assert holder.stdout.readline().strip() == "held"
        writer = threading.Thread(target=commit)
        writer.start()
        writer.join(0.5)
        assert writer.is_alive(), "the batch did not wait for the other writer"
        assert Placement.objects.count() == 0
    finally:
        holder.stdin.close()  # the other process lets go (and exits)
        holder.wait(10)
    writer.join(20)
    assert not writer.is_alive()
    (outcome,) = outcomes
    assert isinstance(outcome, services.PlacementResult)
    assert list(Placement.objects.values_list("x", "y", "color")) == [(1, 2, 3)]


def test_an_unusable_lock_file_leaves_batches_to_sqlites_own_lock(
    make_canvas, tmp_path, caplog
):
    """A lock file that cannot be created (a read-only directory, say) costs
    only the quick hand-over: the batch still commits, and the log says why."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's writers only (the first pass)")
    canvas = make_canvas(slug="turns", cooldown=0)
    player = Player.objects.create(name="unlocked").pk
    missing = tmp_path / "no-such-dir" / "db.sqlite3"
    real_path = writer_turn.lock_path

    def lock_path(database: str) -> str | None:
        return real_path(str(missing))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writer_turn, "lock_path", lock_path)
        # canvas.* loggers do not propagate to the root, where caplog listens.
        patch.setattr(
            writer_turn.log, "handlers", [*writer_turn.log.handlers, caplog.handler]
        )
        (outcome,) = ingest.placements_commit(
            [ingest.PlaceRequest(canvas.pk, player, 7, 8, 9)]
        )
    assert isinstance(outcome, services.PlacementResult)
    assert "unusable" in caplog.text and "no-such-dir" in caplog.text
    assert list(Placement.objects.values_list("x", "y", "color")) == [(7, 8, 9)]
