"""canvas/sql.py: the raw-SQL helpers of the hot paths."""

import pytest
from django.db import DatabaseError, connection, transaction

from canvas import services
from canvas.models import Chunk
from canvas.sql import binding_cursor, int_array

pytestmark = pytest.mark.django_db


@pytest.fixture
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("server-side binding is PostgreSQL's (make test's second pass)")


@pytest.mark.usefixtures("postgres_only")
def test_binding_cursor_writes_bytes_in_the_callers_transaction(make_canvas):
    canvas = make_canvas(slug="binding", width=64, height=64)
    with pytest.raises(RuntimeError), transaction.atomic():
        services.chunks_write(
            canvas_id=canvas.pk, chunks={(0, 0): bytearray(b"\x07" * 4096)}
        )
        assert (
            bytes(Chunk.objects.get(canvas=canvas, cx=0, cy=0).data)[:2] == b"\x07\x07"
        )
        raise RuntimeError  # roll back: the write must go with the transaction
    assert bytes(Chunk.objects.get(canvas=canvas, cx=0, cy=0).data)[:2] == b"\x00\x00"


@pytest.mark.usefixtures("postgres_only")
def test_binding_cursor_errors_arrive_as_djangos():
    with pytest.raises(DatabaseError), binding_cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table")


@pytest.mark.usefixtures("postgres_only")
def test_a_failed_chunk_write_rolls_back_and_the_connection_goes_on(make_canvas):
    """An error from the pipelined writes reaches the caller as Django's; the
    savepoint rolls back and the same transaction carries on."""
    canvas = make_canvas(slug="pipeline-error", width=64, height=64)
    with transaction.atomic():
        with pytest.raises(DatabaseError), transaction.atomic():
            services.chunks_write(
                canvas_id=canvas.pk,
                chunks={(0, 0): bytearray(b"\x01" * 4096), ("x", 0): bytearray(1)},
            )
        assert bytes(Chunk.objects.get(canvas=canvas, cx=0, cy=0).data)[:1] == b"\x00"
    services.chunks_write(
        canvas_id=canvas.pk, chunks={(0, 0): bytearray(b"\x02" * 4096)}
    )
    assert bytes(Chunk.objects.get(canvas=canvas, cx=0, cy=0).data)[:1] == b"\x02"


def test_int_array_is_a_literal_of_integers_and_nulls_only():
    assert int_array([1, None, -3]) == "{1,NULL,-3}"
    assert int_array([]) == "{}"
    with pytest.raises(ValueError):
        int_array(["1}; DROP TABLE canvas_player; --"])
