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
        pytest.skip("PostgreSQL only (make test's second pass)")


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
    """An error from the chunk write reaches the caller as Django's; the
    savepoint rolls back and the same transaction carries on."""
    canvas = make_canvas(slug="pipeline-error", width=64, height=64)
    with transaction.atomic():
        with pytest.raises(DatabaseError), transaction.atomic():
            services.chunks_write(
                canvas_id=canvas.pk,
                chunks={(0, 0): bytearray(b"\x01" * 4096), (2**40, 0): bytearray(1)},
            )
        assert bytes(Chunk.objects.get(canvas=canvas, cx=0, cy=0).data)[:1] == b"\x00"
    services.chunks_write(
        canvas_id=canvas.pk, chunks={(0, 0): bytearray(b"\x02" * 4096)}
    )
    assert bytes(Chunk.objects.get(canvas=canvas, cx=0, cy=0).data)[:1] == b"\x02"


def test_chunk_writes_past_one_statement_reach_every_chunk(make_canvas):
    """PostgreSQL writes 500 chunks per statement, SQLite 332: 1,200 take
    three or four."""
    canvas = make_canvas(slug="many-chunks", width=64 * 40, height=64 * 30)
    chunks = {
        (cx, cy): bytearray([cx, cy]) * 2048 for cx in range(40) for cy in range(30)
    }
    services.chunks_write(canvas_id=canvas.pk, chunks=chunks)
    stored = {
        (cx, cy): bytes(data)
        for cx, cy, data in Chunk.objects.filter(canvas=canvas).values_list(
            "cx", "cy", "data"
        )
    }
    assert len(stored) == 1200
    wrong = sorted(key for key, data in chunks.items() if stored[key] != bytes(data))
    assert wrong == []


def test_a_chunk_write_to_a_missing_row_fails_loudly(make_canvas):
    canvas = make_canvas(slug="missing-chunk", width=64, height=64)
    with pytest.raises(RuntimeError, match="1 of 2 chunk rows"):
        services.chunks_write(
            canvas_id=canvas.pk,
            chunks={(0, 0): bytearray(4096), (5, 5): bytearray(4096)},
        )


@pytest.mark.usefixtures("postgres_only")
def test_chunks_are_compressed_with_lz4_where_the_server_has_it():
    """Migration 0010: pglz compression was most of a group commit's chunk writes."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
            " WHERE name = 'default_toast_compression'"
        )
        if not cursor.fetchone()[0]:
            pytest.skip("this PostgreSQL server was built without lz4")
        cursor.execute(
            "SELECT attcompression FROM pg_attribute"
            " WHERE attrelid = 'canvas_chunk'::regclass AND attname = 'data'"
        )
        assert cursor.fetchone()[0] == "l"


def test_int_array_is_a_literal_of_integers_and_nulls_only():
    assert int_array([1, None, -3]) == "{1,NULL,-3}"
    assert int_array([]) == "{}"
    with pytest.raises(ValueError):
        int_array(["1}; DROP TABLE canvas_player; --"])
