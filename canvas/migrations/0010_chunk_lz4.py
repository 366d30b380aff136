"""Chunks compressed with lz4 on PostgreSQL (where the server has it).

A chunk is 4 KB, past the size where PostgreSQL compresses a value, and a
group commit rewrites a few hundred of them. With the default pglz that
compression was most of the write: 245 chunk updates took 16-53 ms with pglz
and 10-22 ms with lz4, blank to full boards (bench/RESULTS.md, ingest).
Existing values stay as they are until next written. SQLite: nothing to do.
"""

from django.db import migrations

LZ4_AVAILABLE = (
    "SELECT 'lz4' = ANY(enumvals) FROM pg_settings"
    " WHERE name = 'default_toast_compression'"
)


def _compression(method: str):
    def apply(apps, schema_editor) -> None:
        connection = schema_editor.connection
        if connection.vendor != "postgresql":
            return
        with connection.cursor() as cursor:
            cursor.execute(LZ4_AVAILABLE)
            row = cursor.fetchone()
        if not row or not row[0]:
            return  # PostgreSQL < 14 or built without lz4: keep the default
        table = schema_editor.quote_name(
            apps.get_model("canvas", "Chunk")._meta.db_table
        )
        # The ALTER only changes the catalogue, but takes the table's exclusive
        # lock: behind a long transaction it would stall every board read and
        # write while it waits. Give up after 5 s instead (run migrate again).
        schema_editor.execute("SET LOCAL lock_timeout = '5s'")
        schema_editor.execute(
            f"ALTER TABLE {table} ALTER COLUMN data SET COMPRESSION {method}"
        )

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("canvas", "0009_connection_ip_index"),
    ]

    operations = [
        migrations.RunPython(_compression("lz4"), _compression("DEFAULT")),
    ]
