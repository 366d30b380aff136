"""Moderation reads: history at a pixel, player summaries, regions at any instant."""

import io
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Min, QuerySet
from PIL import Image

from .models import CHUNK_SIZE, Canvas, Chunk, ModerationAction, Placement, Player
from .selectors import palette_rgb

Region = tuple[int, int, int, int]  # (x0, y0, x1, y1), bounds inclusive

MSG_NO_PLAYER = "no player named {names}"
MSG_NO_PLAYER_ID = "no player #{ids}"
MSG_AMBIGUOUS_NAME = (
    "{name!r} is the name of several players: {players}; give the one you mean"
    " as #id (or each of them)"
)


class PlayerLookupError(ValueError):
    """Names or ids that do not pick out players, with a message to show."""


def _player_label(player: Player) -> str:
    kind = "account" if player.user_id else "anonymous"
    return f"#{player.pk} ({kind})"


def names_shared(*, names: list[str]) -> set[str]:
    """Those of `names` that more than one player has."""
    rows = (
        Player.objects.filter(name__in=names)
        .values("name")
        .annotate(players=Count("pk"))
        .filter(players__gt=1)
    )
    return {row["name"] for row in rows}


def players_resolve(*, tokens: list[str]) -> tuple[int, ...]:
    """Player ids for names and "#id" tokens, as a moderator types them.

    Names are not unique (an account may share an anonymous player's name), so
    a name that several players have is refused, listing them: rolling back an
    innocent namesake is worse than asking. No name holds "#" (usernames and
    generated names never do), so "#12" can only mean player 12.
    """
    ids = {t[1:] for t in tokens if t.startswith("#")}
    names = {t for t in tokens if not t.startswith("#")}
    if not all(i.isascii() and i.isdigit() and len(i) < 19 for i in ids):
        raise PlayerLookupError(MSG_NO_PLAYER_ID.format(ids=", #".join(sorted(ids))))
    wanted = {int(i) for i in ids}
    found = set(Player.objects.filter(pk__in=wanted).values_list("pk", flat=True))
    if wanted - found:
        missing = ", #".join(str(i) for i in sorted(wanted - found))
        raise PlayerLookupError(MSG_NO_PLAYER_ID.format(ids=missing))
    by_name: dict[str, list[Player]] = {}
    for player in Player.objects.filter(name__in=names).order_by("pk"):
        by_name.setdefault(player.name, []).append(player)
    if names - by_name.keys():
        missing = ", ".join(sorted(names - by_name.keys()))
        raise PlayerLookupError(MSG_NO_PLAYER.format(names=missing))
    for name, namesakes in sorted(by_name.items()):
        if len(namesakes) > 1:
            labels = ", ".join(_player_label(p) for p in namesakes)
            raise PlayerLookupError(
                MSG_AMBIGUOUS_NAME.format(name=name, players=labels)
            )
        found.add(namesakes[0].pk)
    return tuple(sorted(found))


@dataclass(frozen=True)
class PlayerSummary:
    placements: int
    first_placed_at: datetime | None
    last_placed_at: datetime | None
    bans: list[ModerationAction]


def board_region(*, canvas: Canvas, region: Region) -> bytes:
    """The current colours of a region, row-major, read from its chunks only."""
    x0, y0, x1, y1 = region
    width = x1 - x0 + 1
    out = bytearray(width * (y1 - y0 + 1))
    rows = Chunk.objects.filter(
        canvas_id=canvas.pk,
        cx__gte=x0 // CHUNK_SIZE,
        cx__lte=x1 // CHUNK_SIZE,
        cy__gte=y0 // CHUNK_SIZE,
        cy__lte=y1 // CHUNK_SIZE,
    ).values_list("cx", "cy", "data")
    for cx, cy, data in rows:
        data = bytes(data)
        left, right = max(x0, cx * CHUNK_SIZE), min(x1, cx * CHUNK_SIZE + 63)
        for y in range(max(y0, cy * CHUNK_SIZE), min(y1, cy * CHUNK_SIZE + 63) + 1):
            start = (y % CHUNK_SIZE) * CHUNK_SIZE + left % CHUNK_SIZE
            at = (y - y0) * width + left - x0
            out[at : at + right - left + 1] = data[start : start + right - left + 1]
    return bytes(out)


def seq_at(*, canvas: Canvas, at: datetime) -> int:
    """The seq of the newest change made at or before `at` (0: none)."""
    newest = Placement.objects.filter(canvas_id=canvas.pk, placed_at__lte=at).aggregate(
        seq=Max("seq")
    )
    return newest["seq"] or 0


def region_at_seq(*, canvas: Canvas, region: Region, seq: int) -> bytes:
    """A region as the board showed it right after change `seq`.

    Start from the board now and undo every later change, newest first, with
    the colour it replaced. Changes committed while this runs are undone too,
    so the result does not depend on when the board was read.
    """
    x0, y0, x1, y1 = region
    width = x1 - x0 + 1
    out = bytearray(board_region(canvas=canvas, region=region))
    later = (
        Placement.objects.filter(
            canvas_id=canvas.pk,
            seq__gt=seq,
            x__gte=x0,
            x__lte=x1,
            y__gte=y0,
            y__lte=y1,
        )
        .order_by("-seq")
        .values_list("x", "y", "previous_color")
    )
    for x, y, previous in later.iterator(chunk_size=5000):
        out[(y - y0) * width + x - x0] = previous
    return bytes(out)


def region_png(*, canvas: Canvas, region: Region, data: bytes) -> bytes:
    """Encode region bytes (row-major palette indexes) as a PNG."""
    x0, y0, x1, y1 = region
    image = Image.frombytes("P", (x1 - x0 + 1, y1 - y0 + 1), data)
    image.putpalette(palette_rgb(canvas.palette))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def region_with_changes(
    *, region: Region, data: bytes, changes: list[tuple[int, int, int]]
) -> bytes:
    """Region bytes with (x, y, colour) changes inside it applied."""
    x0, y0, x1, y1 = region
    width = x1 - x0 + 1
    out = bytearray(data)
    for x, y, color in changes:
        if x0 <= x <= x1 and y0 <= y <= y1:
            out[(y - y0) * width + x - x0] = color
    return bytes(out)


def pixel_history(*, canvas_id: int, x: int, y: int) -> QuerySet:
    """Every change at one pixel, newest first."""
    return (
        Placement.objects.filter(canvas_id=canvas_id, x=x, y=y)
        .select_related("player")
        .order_by("-seq")
    )


def player_summary(*, player: Player) -> PlayerSummary:
    stats = Placement.objects.filter(player=player).aggregate(
        count=Count("pk"), first=Min("placed_at"), last=Max("placed_at")
    )
    bans = ModerationAction.objects.filter(
        player=player,
        kind__in=[ModerationAction.KIND_BAN, ModerationAction.KIND_UNBAN],
    ).order_by("-created_at")
    return PlayerSummary(
        placements=stats["count"],
        first_placed_at=stats["first"],
        last_placed_at=stats["last"],
        bans=list(bans.select_related("moderator")),
    )


def rollbacks_active(*, canvas_id: int) -> QuerySet:
    return ModerationAction.objects.filter(
        canvas_id=canvas_id,
        kind=ModerationAction.KIND_ROLLBACK,
        undone_at__isnull=True,
    )
