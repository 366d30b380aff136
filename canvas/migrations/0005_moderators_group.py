"""Create the `Moderators` group with exactly the permissions moderation needs."""

from django.db import migrations

GROUP = "Moderators"
# (app_label, codename): read the history, players and canvases; act only through
# the moderation services, never by editing rows directly.
PERMISSIONS = [
    ("canvas", "view_canvas"),
    ("canvas", "view_placement"),
    ("canvas", "view_player"),
    ("canvas", "view_moderationaction"),
    ("canvas", "rollback_placements"),
    ("canvas", "ban_player"),
    ("canvas", "moderate_canvas"),
]


def create_group(apps, schema_editor):
    """Idempotent: permissions are made now, not after migrate, so they can be used."""
    from django.contrib.auth.management import create_permissions

    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    group, _ = Group.objects.get_or_create(name=GROUP)
    wanted = [
        Permission.objects.get(content_type__app_label=app, codename=codename)
        for app, codename in PERMISSIONS
    ]
    group.permissions.set(wanted)


def delete_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("canvas", "0004_moderation"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, delete_group)]
