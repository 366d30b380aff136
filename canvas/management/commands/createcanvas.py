"""manage.py createcanvas SLUG [--width W] [--height H] [--cooldown S] [--title T]"""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_slug

from canvas import services
from canvas.models import Canvas


class Command(BaseCommand):
    help = "Create a canvas, or update these fields of an existing one."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "slug", help="its name in URLs (letters, digits, - and _; at most 50)"
        )
        parser.add_argument(
            "--width",
            type=int,
            help="pixels across, 1-10000 (new canvas: 1000). Shrinking drops the"
            " pixels outside the new size",
        )
        parser.add_argument(
            "--height", type=int, help="pixels down, 1-10000 (new canvas: 1000)"
        )
        parser.add_argument(
            "--cooldown",
            type=int,
            help="seconds a player waits between placements (new canvas: 300)",
        )
        parser.add_argument("--title", help="shown to players (new canvas: the slug)")

    def handle(
        self, *args, slug: str, width, height, cooldown, title, **options
    ) -> None:
        try:
            validate_slug(slug)
        except ValidationError:
            raise CommandError(
                f"invalid slug {slug!r}: use letters, digits, - and _"
            ) from None
        before = Canvas.objects.filter(slug=slug).values("width", "height").first()
        try:
            canvas, created = services.canvas_create_or_update(
                slug=slug,
                width=width,
                height=height,
                cooldown_seconds=cooldown,
                title=title,
            )
        except ValueError as error:
            raise CommandError(str(error)) from error
        verb = "created" if created else "updated"
        self.stdout.write(
            f"{verb} canvas {canvas.slug}: {canvas.width}x{canvas.height}, "
            f"cooldown {canvas.cooldown_seconds} s"
        )
        if before and (
            canvas.width < before["width"] or canvas.height < before["height"]
        ):
            self.stderr.write(
                f"note: the board was cut from {before['width']}x{before['height']};"
                " the pixels outside it are gone (growing it back leaves them blank)"
            )
