from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate


class CanvasConfig(AppConfig):
    name = "canvas"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_ensure_main_canvas, sender=self)
        if any(db.get("OPTIONS", {}).get("pool") for db in settings.DATABASES.values()):
            from . import dbpool

            dbpool.install()


def _ensure_main_canvas(sender, using="default", **kwargs) -> None:
    """The contract: `migrate` also creates the canvas `main` if it is absent."""
    from .models import Canvas
    from .services import canvas_create_or_update

    if not Canvas.objects.using(using).filter(slug="main").exists():
        canvas_create_or_update(slug="main", title="r/place")
