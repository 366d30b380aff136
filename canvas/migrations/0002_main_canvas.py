"""Create the canvas `main`: 1000x1000, the 2017 palette, 300 s cooldown."""

from django.db import migrations

# Frozen copies, so later changes to the models module cannot change history.
PALETTE_2017 = [
    "#ffffff", "#e4e4e4", "#888888", "#222222", "#ffa7d1", "#e50000",
    "#e59500", "#a06a42", "#e5d900", "#94e044", "#02be01", "#00d3dd",
    "#0083c7", "#0000ea", "#cf6ee4", "#820080",
]  # fmt: skip
CHUNK_SIZE = 64


def create_main(apps, schema_editor):
    Canvas = apps.get_model("canvas", "Canvas")
    Chunk = apps.get_model("canvas", "Chunk")
    if Canvas.objects.filter(slug="main").exists():
        return
    canvas = Canvas.objects.create(
        slug="main",
        title="r/place",
        width=1000,
        height=1000,
        palette=PALETTE_2017,
        cooldown_seconds=300,
    )
    chunks = -(-1000 // CHUNK_SIZE)
    blank = bytes(CHUNK_SIZE * CHUNK_SIZE)
    Chunk.objects.bulk_create(
        Chunk(canvas=canvas, cx=cx, cy=cy, data=blank)
        for cy in range(chunks)
        for cx in range(chunks)
    )


class Migration(migrations.Migration):
    dependencies = [("canvas", "0001_initial")]

    operations = [migrations.RunPython(create_main, migrations.RunPython.noop)]
