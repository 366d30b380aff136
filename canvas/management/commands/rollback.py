"""manage.py rollback SLUG [--user NAME ...] [--since] [--until] [--region] ..."""

import argparse
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from canvas import moderation
from canvas.exceptions import CanvasNotFound
from canvas.moderation_selectors import PlayerLookupError, players_resolve
from canvas.selectors import canvas_get

DEFAULT_REASON = "manage.py rollback"
MSG_EMPTY_USER = "--user needs a player name or #ID"


def instant(text: str) -> datetime:
    """An ISO 8601 instant; without an offset it is read as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 date and time: {text!r}"
        ) from None
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    return value


class Command(BaseCommand):
    help = "Roll back placements by players, time window and region (as in admin)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("slug")
        parser.add_argument(
            "--user",
            action="extend",
            nargs="+",
            default=[],
            metavar="NAME",
            help=(
                "player name (or #ID); repeat, or list several separated by"
                " spaces or commas. A name that several players share is"
                " refused: give #ID instead"
            ),
        )
        parser.add_argument("--since", type=instant, help="ISO 8601, inclusive")
        parser.add_argument("--until", type=instant, help="ISO 8601, inclusive")
        parser.add_argument(
            "--region",
            nargs=4,
            type=int,
            metavar=("X0", "Y0", "X1", "Y1"),
            help="inclusive bounds",
        )
        parser.add_argument("--dry-run", action="store_true")
        parser.add_argument("--reason", default=DEFAULT_REASON)

    def handle(self, *args, slug, user, since, until, region, dry_run, reason, **o):
        try:
            canvas = canvas_get(slug=slug)
        except CanvasNotFound:
            raise CommandError(f"no canvas {slug!r}") from None
        scope = moderation.Scope(
            player_ids=self.player_ids(user),
            since=since,
            until=until,
            region=tuple(region) if region else None,
        )
        # Both output lines are the contract's, word for word ("1 placements"
        # included): scripts parse them. Admin's messages are the grammatical ones.
        try:
            if dry_run:
                preview = moderation.rollback_preview(canvas=canvas, scope=scope)
                self.stdout.write(
                    f"would roll back {preview.placements} placements, "
                    f"change {preview.pixels} pixels"
                )
                return
            action = moderation.placements_rollback(
                canvas_id=canvas.pk, scope=scope, reason=reason
            )
        except moderation.ModerationError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(
            f"{action.placements_count} placements rolled back, "
            f"{action.pixels_count} pixels changed"
        )

    def player_ids(self, names: list[str]) -> tuple[int, ...]:
        # Names never hold commas or spaces, so "a,b" and "a b" list two players,
        # as in admin's players box. An empty one is refused, not dropped: dropping
        # it would widen the scope to every player.
        tokens = [token for name in names for token in name.replace(",", " ").split()]
        if any(not name.replace(",", " ").strip() for name in names):
            raise CommandError(MSG_EMPTY_USER)
        try:
            return players_resolve(tokens=tokens)
        except PlayerLookupError as error:
            raise CommandError(str(error)) from None
