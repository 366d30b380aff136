"""Drop the partial index on Placement.rolled_back_by.

With no index on rolled_back_by (nor on rolled_back), marking a placement
rolled back can be a HOT update, with no index writes at all; it was most of a
rollback's time. Undo now finds a rollback's placements through its scope.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("canvas", "0006_placement_drop_redundant_fk_indexes"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="placement",
            name="placement_rolled_back_by",
        ),
    ]
