"""Drop Placement's single-column indexes on canvas_id and player_id.

The composite indexes placement_seq, placement_pixel and placement_time lead
with canvas_id, and placement_player with player_id, so these two served no
query; each was one more index write per placement and per placement a
rollback marks. Only the indexes go: the foreign key constraints stay as they
are (AlterField would drop and re-add them, re-checking the whole table).
"""

import django.db.models.deletion
from django.db import migrations, models

INDEXES = [
    ("canvas_placement_canvas_id_8af48aac", "canvas_id"),
    ("canvas_placement_player_id_1c4d206f", "player_id"),
]


class Migration(migrations.Migration):
    dependencies = [
        ("canvas", "0005_moderators_group"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    sql=f'DROP INDEX IF EXISTS "{name}"',
                    reverse_sql=(
                        f'CREATE INDEX "{name}" ON "canvas_placement" ("{column}")'
                    ),
                )
                for name, column in INDEXES
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="placement",
                    name="canvas",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        to="canvas.canvas",
                    ),
                ),
                migrations.AlterField(
                    model_name="placement",
                    name="player",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        to="canvas.player",
                    ),
                ),
            ],
        ),
    ]
