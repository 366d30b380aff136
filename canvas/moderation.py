"""Moderation writes: roll back, preview, undo, ban, pause and cooldown.

The board always shows, at each pixel, the newest placement that is not rolled
back, or the background (index 0); docs/moderation.md gives worked examples. A
placement is rolled back while at least one rollback that has not been undone
covers it; `Placement.rolled_back_by` names one such rollback, so undoing a
rollback releases only what no other rollback still covers.

Every pixel a moderator changes becomes a Placement of kind "moderation" with
its own seq, broadcast after commit like a player's placement. Large rollbacks
run in batches of whole pixels, one transaction each, so live placements wait
for one batch at most, never for the whole rollback. On PostgreSQL a batch
marks its placements and reads each pixel's newest survivor under an advisory
lock that only other moderation writes take; it locks the canvas row (where
placements queue for their seq) only to re-read pixels placed on meanwhile and
write the board and the moderation rows, so placements wait for that part only.
"""

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import F, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from . import broadcast, selectors, services
from .models import (
    CHUNK_SIZE,
    Canvas,
    Cooldown,
    ModerationAction,
    Placement,
    Player,
)
from .moderation_selectors import board_region
from .protocol import Update
from .sql import int_array, sql_in

events = logging.getLogger("canvas.moderation")

# Placements per transaction (more when one pixel has more); one batch's work is
# what live placements may wait for.
BATCH_PLACEMENTS = 5000
# Updates per broadcast message, so one huge rollback is not one huge frame.
PUBLISH_BATCH = 5000
# First key of the advisory lock that serialises moderation writes per canvas
# (PostgreSQL; the second key is the canvas id).
ADVISORY_LOCK = 0x706C6D64
# A ban "forever" is a ban until this instant.
BAN_FOREVER = datetime(9999, 1, 1, tzinfo=UTC)

# Bans and the rollback window that may come with them: up to a century.
MAX_HOURS = 100 * 365 * 24
MAX_HOURS_DELTA = timedelta(hours=MAX_HOURS)
MSG_BAD_HOURS = f"Hours must be more than 0 and at most {MAX_HOURS}."
MSG_BAD_COOLDOWN = "The cooldown must be between 0 seconds and a year."
MSG_NOTHING_LEFT = (
    "Nothing in this scope is left to roll back (none of it, or all of it is"
    " rolled back already); nothing was done."
)
MSG_EMPTY_SCOPE = "Choose placements, players, a time window or a region."
# Names the canvas's bounds: "inside the canvas" alone left the moderator to
# look them up (region_message fills it in).
MSG_BAD_REGION = (
    "The region must lie inside the canvas, with x0 <= x1 and y0 <= y1:"
    " x must be 0–{x_max} and y 0–{y_max} on canvas {slug} ({width}×{height})."
)
MSG_BAD_WINDOW = "“since” is later than “until”: that window holds no placement."
MSG_NOT_ROLLBACK = "Only a rollback can be undone."
MSG_ALREADY_UNDONE = "That rollback has already been undone."
MSG_REASON_REQUIRED = "Give a reason; it is kept with the action."
MSG_ALREADY_PAUSED = "The canvas is already paused; nothing was done."
MSG_ALREADY_OPEN = "The canvas is already open; nothing was done."
MSG_NOT_BANNED = "That player is not banned; nothing was done."
MSG_SAME_COOLDOWN = "The cooldown is that already; nothing was done."
MAX_REASON = ModerationAction._meta.get_field("reason").max_length
MSG_REASON_TOO_LONG = f"Keep the reason to {MAX_REASON} characters."


class ModerationError(Exception):
    """A moderation request that cannot be carried out, with a message to show."""


def _reason_check(reason: str) -> None:
    """Refuse a blank reason, or one longer than the audit row keeps."""
    if not reason.strip():
        raise ModerationError(MSG_REASON_REQUIRED)
    # Checked here, not by the database: PostgreSQL would fail mid-way with a
    # bare DataError, and SQLite would keep it whole.
    if len(reason) > MAX_REASON:
        raise ModerationError(MSG_REASON_TOO_LONG)


@dataclass(frozen=True)
class Scope:
    """Which placements a rollback covers: every given criterion must match."""

    placement_ids: tuple[int, ...] = ()
    player_ids: tuple[int, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    # (x0, y0, x1, y1), bounds inclusive.
    region: tuple[int, int, int, int] | None = None

    def is_empty(self) -> bool:
        return not (
            self.placement_ids
            or self.player_ids
            or self.since
            or self.until
            or self.region
        )

    def to_json(self) -> dict:
        return {
            "placement_ids": list(self.placement_ids),
            "player_ids": list(self.player_ids),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "region": list(self.region) if self.region else None,
        }

    @classmethod
    def from_json(cls, data: dict) -> "Scope":
        region = data.get("region")
        return cls(
            placement_ids=tuple(data.get("placement_ids") or ()),
            player_ids=tuple(data.get("player_ids") or ()),
            since=parse_datetime(data["since"]) if data.get("since") else None,
            until=parse_datetime(data["until"]) if data.get("until") else None,
            region=tuple(region) if region else None,
        )

    def q(self, *, canvas_id: int, upto_seq: int) -> Q:
        """The placements in scope among those with seq <= upto_seq."""
        q = Q(canvas_id=canvas_id, kind=Placement.KIND_PLACE, seq__lte=upto_seq)
        if self.placement_ids:
            q &= Q(pk__in=self.placement_ids)
        if self.player_ids:
            q &= Q(player_id__in=self.player_ids)
        if self.since:
            q &= Q(placed_at__gte=self.since)
        if self.until:
            q &= Q(until_lookup(self.until))
        if self.region:
            x0, y0, x1, y1 = self.region
            q &= Q(x__gte=x0, x__lte=x1, y__gte=y0, y__lte=y1)
        return q


@dataclass
class RollbackPreview:
    """What a rollback would do now: counts and every pixel change, with bounds."""

    placements: int
    pixels: int
    changes: list[tuple[int, int, int]] = field(default_factory=list)
    # (x0, y0, x1, y1) around the changed pixels, or around the placements in
    # scope when no pixel would change; None when nothing is in scope.
    bounds: tuple[int, int, int, int] | None = None
    # The newest seq the preview covered: applying with it rolls back exactly
    # what the preview showed, never placements made after it.
    upto_seq: int = 0


def _scope_check(*, canvas: Canvas, scope: Scope) -> None:
    if scope.is_empty():
        raise ModerationError(MSG_EMPTY_SCOPE)
    # Refused rather than run: an empty window is a typo, not a request.
    if scope.since and scope.until and scope.since > scope.until:
        raise ModerationError(MSG_BAD_WINDOW)
    if scope.region:
        region_check(canvas=canvas, region=scope.region)


def region_check(*, canvas: Canvas, region: tuple[int, int, int, int]) -> None:
    """Refuse a region (bounds inclusive) not inside `canvas`, or back to front."""
    x0, y0, x1, y1 = region
    if not (0 <= x0 <= x1 < canvas.width and 0 <= y0 <= y1 < canvas.height):
        raise ModerationError(region_message(canvas=canvas))


def region_message(*, canvas: Canvas) -> str:
    """MSG_BAD_REGION for `canvas`, naming the bounds a region may use."""
    return MSG_BAD_REGION.format(
        x_max=canvas.width - 1,
        y_max=canvas.height - 1,
        slug=canvas.slug,
        width=canvas.width,
        height=canvas.height,
    )


def _batches(*, pending: QuerySet) -> list[list[int]]:
    """Ids of `pending` in batches of about BATCH_PLACEMENTS, never splitting a pixel.

    Pixels are independent, so each batch is rolled back on its own.
    """
    rows = pending.order_by("y", "x", "pk").values_list("y", "x", "pk")
    batches: list[list[int]] = []
    current: list[int] = []
    last = None
    for y, x, pk in rows.iterator(chunk_size=10000):
        if len(current) >= BATCH_PLACEMENTS and (x, y) != last:
            batches.append(current)
            current = []
        current.append(pk)
        last = (x, y)
    if current:
        batches.append(current)
    return batches


def _plan(
    *, canvas_id: int, candidates: QuerySet, visible: Q
) -> list[tuple[int, int, int]]:
    """(x, y, colour) for each pixel of `candidates` once only `visible` shows.

    The colour is that of the newest visible placement at the pixel, or 0.
    The pixels are made distinct first, in a subquery, and each is looked up
    once: with the lookup in the same SELECT as DISTINCT, the database ran it
    for every placement, 25 per pixel in a busy region (on PostgreSQL, 300,000
    placements on 12,100 pixels: 11.4 s that way, 0.85 s this way).
    """
    newest = (
        Placement.objects.filter(
            visible,
            canvas_id=canvas_id,
            kind=Placement.KIND_PLACE,
            x=RawSQL("d.x", ()),
            y=RawSQL("d.y", ()),
        )
        .order_by("-seq")
        .values("color")[:1]
    )
    pixels = candidates.order_by().values("x", "y").distinct()
    newest_sql, newest_params = newest.query.sql_with_params()
    pixels_sql, pixels_params = pixels.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT d.x, d.y, COALESCE(({newest_sql}), 0) FROM ({pixels_sql}) d",
            [*newest_params, *pixels_params],
        )
        return [tuple(row) for row in cursor.fetchall()]


def _pixels_shown(
    *, canvas_id: int, pixels: list[tuple[int, int]]
) -> tuple[int, list[tuple[int, int, int]]]:
    """(x, y, colour) of each pixel's newest placement not rolled back, or 0.

    0 too where a resize wiped that placement's pixel after it (Canvas.shrinks):
    the pixel was cleared, and rolling back later work must not bring it back.
    One query per slice of pixels, each an index probe on (canvas, x, y, seq).
    Also returns a canvas seq up to which the read saw every change: each
    statement reads the canvas seq in its own snapshot, and changes commit in
    seq order, so it saw exactly the changes up to that seq (the smallest of
    them, when the pixels take several statements).
    """
    quote = connection.ops.quote_name
    table = quote(Placement._meta.db_table)
    canvases = quote(Canvas._meta.db_table)
    postgres = connection.vendor == "postgresql"
    size = 50000 if postgres else 2000
    canvas = Canvas.objects.only("shrinks").get(pk=canvas_id)
    seen, shown = None, []
    with connection.cursor() as cursor:
        for start in range(0, len(pixels), size):
            part = pixels[start : start + size]
            if postgres:
                source = "SELECT * FROM unnest(%s::integer[], %s::integer[])"
                params = [int_array(x for x, _ in part), int_array(y for _, y in part)]
            else:
                source = "VALUES " + ",".join(["(%s, %s)"] * len(part))
                params = [v for pixel in part for v in pixel]
            cursor.execute(
                f"WITH u(x, y) AS ({source}) "
                f"SELECT (SELECT seq FROM {canvases} WHERE id = %s), u.x, u.y,"
                # seq and colour of that placement in one probe: seq * 256 +
                # colour (colours are board bytes, below 256).
                f" COALESCE((SELECT p.seq * 256 + p.color FROM {table} p"
                "  WHERE p.canvas_id = %s AND p.x = u.x AND p.y = u.y"
                "  AND p.kind = %s AND p.rolled_back = %s"
                "  ORDER BY p.seq DESC LIMIT 1), 0) FROM u",
                [*params, canvas_id, canvas_id, Placement.KIND_PLACE, False],
            )
            for seq, x, y, packed in cursor.fetchall():
                seen = seq if seen is None else min(seen, seq)
                placed_seq, color = divmod(packed, 256)
                if color and canvas.cleared_since(x=x, y=y, seq=placed_seq):
                    color = 0
                shown.append((x, y, color))
    return seen or 0, shown


def _placements_flag(
    *, ids: list[int], rolled_back: bool, by: int | None, only_by: int | None
) -> tuple[int, list[tuple[int, int]]]:
    """Set rolled_back/rolled_back_by on those of `ids` that qualify.

    Rolling back (only_by None) takes the ids not yet rolled back; releasing
    takes the ids `only_by` owns. Returns the count and the distinct pixels.
    """
    table = connection.ops.quote_name(Placement._meta.db_table)
    count, pixels = 0, set()
    with connection.cursor() as cursor:
        for start in range(0, len(ids), 10000):
            where, params = sql_in("id", ids[start : start + 10000])
            if only_by is None:
                where, params = f"{where} AND rolled_back = %s", [*params, False]
            else:
                where, params = (
                    f"{where} AND rolled_back_by_id = %s",
                    [
                        *params,
                        only_by,
                    ],
                )
            cursor.execute(
                f"UPDATE {table} SET rolled_back = %s, rolled_back_by_id = %s"
                f" WHERE {where} RETURNING x, y",
                [rolled_back, by, *params],
            )
            rows = cursor.fetchall()
            count += len(rows)
            pixels.update(rows)
        if count and connection.vendor == "postgresql":
            # Run the deferred foreign key checks of these rows now, before the
            # canvas row is locked, rather than at commit under it.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
    return count, sorted(pixels)


def _moderation_lock(canvas_id: int) -> None:
    """Serialise moderation writes to a canvas without stopping its placements.

    On PostgreSQL a transaction-level advisory lock, so a batch can mark
    placements and plan its pixels while placements go on, and take the canvas
    row only to write. Elsewhere the canvas row itself (SQLite serialises
    every write anyway).
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", [ADVISORY_LOCK, canvas_id]
            )
    else:
        _canvas_lock(canvas_id)


def _repaint(
    *, canvas_id: int, pixels: list[tuple[int, int]], now: datetime
) -> list[Update]:
    """Show at `pixels` their newest placement not rolled back; return the updates.

    The reading happens before the canvas row is locked; under the lock only
    the pixels placed on meanwhile are read again, then the board is written.
    """
    if not pixels:
        return []
    seen, shown = _pixels_shown(canvas_id=canvas_id, pixels=pixels)
    seq = _canvas_lock(canvas_id)
    if seq != seen:
        later = set(
            Placement.objects.filter(canvas_id=canvas_id, seq__gt=seen).values_list(
                "x", "y"
            )
        )
        again = [pixel for pixel in pixels if pixel in later]
        if again:
            _, fresh = _pixels_shown(canvas_id=canvas_id, pixels=again)
            colors = {(x, y): c for x, y, c in shown}
            colors.update({(x, y): c for x, y, c in fresh})
            shown = [(x, y, c) for (x, y), c in colors.items()]
    return _board_write(canvas_id=canvas_id, changes=shown, now=now)


MODERATION_VARYING = ("seq", "x", "y", "color", "previous_color")


def _moderation_rows_insert(
    *, canvas_id: int, rows: list[tuple[int, int, int, int, int]], now: datetime
) -> None:
    """Insert (seq, x, y, colour, previous colour) moderation rows."""
    proto = Placement(
        canvas_id=canvas_id,
        placed_at=now,
        kind=Placement.KIND_MODERATION,
        player=None,
        seq=0,
        x=0,
        y=0,
        color=0,
        previous_color=0,
    )
    services.placements_insert(proto=proto, varying=MODERATION_VARYING, rows=rows)


def _board_write(
    *, canvas_id: int, changes: list[tuple[int, int, int]], now: datetime
) -> list[Update]:
    """Write the changes that alter a pixel, each with its own seq; return them.

    Call with the canvas row locked. Each touched chunk is read and written once.
    """
    if not changes:
        return []
    # A canvas shrunk since these placements has no such pixels any more:
    # nothing to write there, and nothing to send players for them.
    width, height = (
        Canvas.objects.filter(pk=canvas_id).values_list("width", "height").get()
    )
    changes = [c for c in changes if c[0] < width and c[1] < height]
    if not changes:
        return []
    changes = sorted(changes, key=lambda c: (c[1], c[0]))
    keys = sorted({(x // CHUNK_SIZE, y // CHUNK_SIZE) for x, y, _ in changes})
    chunks = services.chunks_read(canvas_id=canvas_id, keys=keys)
    changed, dirty = [], {}
    for x, y, color in changes:
        key = (x // CHUNK_SIZE, y // CHUNK_SIZE)
        data = chunks[key]
        offset = (y % CHUNK_SIZE) * CHUNK_SIZE + (x % CHUNK_SIZE)
        prior = data[offset]
        if prior != color:
            data[offset] = color
            dirty[key] = data
            changed.append((x, y, color, prior))
    if not changed:
        return []
    services.chunks_write(canvas_id=canvas_id, chunks=dirty)
    first = services.seqs_allocate(canvas_id=canvas_id, count=len(changed))
    _moderation_rows_insert(
        canvas_id=canvas_id,
        rows=[(first + i, *change) for i, change in enumerate(changed)],
        now=now,
    )
    updates = [(first + i, x, y, c) for i, (x, y, c, _) in enumerate(changed)]
    for start in range(0, len(updates), PUBLISH_BATCH):
        broadcast.publish_on_commit(
            canvas_id=canvas_id, updates=updates[start : start + PUBLISH_BATCH]
        )
    return updates


def _canvas_lock(canvas_id: int) -> int:
    """Lock the canvas row (placements wait at their seq) and return its seq."""
    return (
        Canvas.objects.select_for_update()
        .filter(pk=canvas_id)
        .values_list("seq", flat=True)
        .get()
    )


def _action_add(*, action_id: int, placements: int, updates: list[Update]) -> None:
    """Add one batch's counts and seqs to its action, in the batch's transaction."""
    fields = {
        "placements_count": F("placements_count") + placements,
        "pixels_count": F("pixels_count") + len(updates),
    }
    if updates:
        fields["seq_from"] = Coalesce(F("seq_from"), updates[0][0])
        fields["seq_to"] = updates[-1][0]
    ModerationAction.objects.filter(pk=action_id).update(**fields)


def _bounds(points: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return (min(xs), min(ys), max(xs), max(ys))


def rollback_preview(
    *, canvas: Canvas, scope: Scope, upto_seq: int | None = None
) -> RollbackPreview:
    """What placements_rollback would do with this scope now; writes nothing.

    Only placements up to `upto_seq` (default: the canvas's seq) are in scope.
    """
    _scope_check(canvas=canvas, scope=scope)
    upto_seq = _upto(canvas=canvas, upto_seq=upto_seq)
    in_scope = scope.q(canvas_id=canvas.pk, upto_seq=upto_seq)
    pending = Placement.objects.filter(in_scope, rolled_back=False)
    count = pending.count()
    planned = _plan(
        canvas_id=canvas.pk,
        candidates=pending,
        visible=Q(rolled_back=False) & ~in_scope,
    )
    changes, bounds = [], None
    if planned:
        bounds = _bounds([(x, y) for x, y, _ in planned])
        before = board_region(canvas=canvas, region=bounds)
        width = bounds[2] - bounds[0] + 1
        changes = [
            (x, y, color)
            for x, y, color in planned
            if before[(y - bounds[1]) * width + x - bounds[0]] != color
        ]
    if changes:
        bounds = _bounds([(x, y) for x, y, _ in changes])
    return RollbackPreview(
        placements=count,
        pixels=len(changes),
        changes=changes,
        bounds=bounds,
        upto_seq=upto_seq,
    )


def _upto(*, canvas: Canvas, upto_seq: int | None) -> int:
    """The newest seq a rollback covers: the one asked for, never past the canvas's."""
    return canvas.seq if upto_seq is None else max(0, min(upto_seq, canvas.seq))


def until_lookup(until: datetime) -> tuple[str, datetime]:
    """The `placed_at` lookup for "up to `until`", inclusive at its precision.

    Times are shown to the second, so `until 10:02:24` must keep a placement
    made at 10:02:24.96; a time with a fraction is taken exactly.
    """
    if until.microsecond:
        return "placed_at__lte", until
    try:
        return "placed_at__lt", until + timedelta(seconds=1)
    except OverflowError:  # the last second there is: nothing lies beyond it
        return "placed_at__lte", until


def placements_rollback(
    *,
    canvas_id: int,
    scope: Scope,
    reason: str,
    moderator_id: int | None = None,
    player_id: int | None = None,
    upto_seq: int | None = None,
) -> ModerationAction:
    """Roll back the placements in scope; record and return the action.

    Only placements up to `upto_seq` are in scope (a preview's, so what it
    showed is what is applied), and never any made after this call starts.
    Counts: placements newly marked rolled back, and pixels whose colour changed.
    With nothing left to mark, nothing is recorded and the action returned is
    unsaved (pk None, counts 0): a rollback that marked nothing would still
    hold its scope, so undoing an earlier rollback would then restore nothing.
    """
    _reason_check(reason)
    canvas = Canvas.objects.get(pk=canvas_id)
    _scope_check(canvas=canvas, scope=scope)
    # Placements made after this point are not in scope, however long this takes.
    upto_seq = _upto(canvas=canvas, upto_seq=upto_seq)
    in_scope = scope.q(canvas_id=canvas_id, upto_seq=upto_seq)
    pending = Placement.objects.filter(in_scope, rolled_back=False)
    if player_id is None and len(scope.player_ids) == 1:
        # About one player: listed and found under that player's name.
        (player_id,) = scope.player_ids
    action = ModerationAction(
        kind=ModerationAction.KIND_ROLLBACK,
        canvas=canvas,
        player_id=player_id,
        moderator_id=moderator_id,
        reason=reason,
        scope={**scope.to_json(), "upto_seq": upto_seq},
    )
    for ids in _batches(pending=pending):
        _rollback_batch(action=action, ids=ids)
    if action.pk is not None:
        action.refresh_from_db()
    return _logged(action)


def _rollback_batch(*, action: ModerationAction, ids: list[int]) -> None:
    """Mark and repaint one batch; the action row is saved with its first marks.

    `pending` was read before any lock, so a concurrent rollback of the same
    scope (a form sent twice) may have marked these placements since. The row
    is written under the moderation lock, in the transaction that marks, and
    only if that marks something: such a twin records nothing at all.
    """
    with transaction.atomic():
        _moderation_lock(action.canvas_id)
        created = action.pk is None
        if created:
            action.save()
        # Only those not rolled back yet: another rollback may have marked some.
        marked, pixels = _placements_flag(
            ids=ids, rolled_back=True, by=action.pk, only_by=None
        )
        if created and not marked:
            transaction.set_rollback(True)  # unsave the row: nothing was marked
            action.pk = None
            return
        updates = _repaint(
            canvas_id=action.canvas_id, pixels=pixels, now=timezone.now()
        )
        _action_add(action_id=action.pk, placements=marked, updates=updates)


def _rollback_q(action: ModerationAction) -> Q:
    scope = Scope.from_json(action.scope)
    return scope.q(canvas_id=action.canvas_id, upto_seq=action.scope["upto_seq"])


def rollback_undo(
    *, action_id: int, reason: str, moderator_id: int | None = None
) -> ModerationAction:
    """Undo a rollback: its placements show again wherever nothing newer does.

    A placement another active rollback also covers stays rolled back.
    """
    _reason_check(reason)
    with transaction.atomic():
        action = ModerationAction.objects.select_for_update().get(pk=action_id)
        if action.kind != ModerationAction.KIND_ROLLBACK:
            raise ModerationError(MSG_NOT_ROLLBACK)
        if action.is_undone:
            raise ModerationError(MSG_ALREADY_UNDONE)
        now = timezone.now()
        action.undone_at = now
        action.save(update_fields=["undone_at"])
        undo = ModerationAction.objects.create(
            kind=ModerationAction.KIND_UNDO,
            canvas_id=action.canvas_id,
            player_id=action.player_id,
            moderator_id=moderator_id,
            reason=reason,
            scope={"undo_of": action.pk},
            undo_of=action,
        )
    # rolled_back_by is not indexed; the placements a rollback owns are all in
    # its scope (it marks only those, and undo hands them only to rollbacks
    # whose scope covers them), so the scope's indexes find them.
    owned = Placement.objects.filter(_rollback_q(action), rolled_back_by=action)
    for ids in _batches(pending=owned):
        _undo_batch(action=action, undo=undo, ids=ids)
    undo.refresh_from_db()
    return _logged(undo)


def _rollbacks_holding(*, canvas_id: int) -> QuerySet:
    """Rollbacks in force that marked something, oldest first.

    One that marked nothing is no longer recorded (placements_rollback), and
    any left from before must not take over placements another one releases.
    """
    return ModerationAction.objects.filter(
        canvas_id=canvas_id,
        kind=ModerationAction.KIND_ROLLBACK,
        undone_at__isnull=True,
        placements_count__gt=0,
    ).order_by("pk")


def placements_held(*, action: ModerationAction) -> int:
    """How many placements `action` keeps rolled back now: those it marked, and
    any an undone rollback handed on to it because its scope covers them."""
    return Placement.objects.filter(_rollback_q(action), rolled_back_by=action).count()


def still_covered(*, action: ModerationAction) -> dict[int, int]:
    """Placements of `action`'s scope that rollbacks in force still cover, by rollback.

    What an undo could not restore, and every rollback that must be undone for
    it: a placement shows again only once none of them covers it.
    """
    held = Placement.objects.filter(_rollback_q(action), rolled_back=True)
    covered = {}
    for other in _rollbacks_holding(canvas_id=action.canvas_id).exclude(pk=action.pk):
        count = held.filter(_rollback_q(other)).count()
        if count:
            covered[other.pk] = count
    return covered


def _undo_batch(*, action: ModerationAction, undo: ModerationAction, ids: list) -> None:
    with transaction.atomic():
        _moderation_lock(action.canvas_id)
        owned = Placement.objects.filter(pk__in=ids, rolled_back_by=action)
        for other in _rollbacks_holding(canvas_id=action.canvas_id):
            owned.filter(_rollback_q(other)).update(rolled_back_by=other)
        released, pixels = _placements_flag(
            ids=ids, rolled_back=False, by=None, only_by=action.pk
        )
        updates = _repaint(
            canvas_id=action.canvas_id, pixels=pixels, now=timezone.now()
        )
        _action_add(action_id=undo.pk, placements=released, updates=updates)


def player_ban(
    *,
    player_id: int,
    reason: str,
    duration: timedelta | None = None,
    rollback_hours: float | None = None,
    moderator_id: int | None = None,
) -> ModerationAction:
    """Ban a player (for `duration`, or for good); optionally roll back recent work.

    Placements check the ban in the database, so open sockets are refused at once.
    The returned ban's `rollbacks` lists the rollbacks it recorded.
    """
    _reason_check(reason)
    # Checked before anything is written: the rollback runs after the ban commits.
    if duration is not None and not timedelta(0) < duration <= MAX_HOURS_DELTA:
        raise ModerationError(MSG_BAD_HOURS)
    if rollback_hours is not None and not 0 < rollback_hours <= MAX_HOURS:
        raise ModerationError(MSG_BAD_HOURS)
    now = timezone.now()
    until = now + duration if duration else BAN_FOREVER
    with transaction.atomic():
        Player.objects.filter(pk=player_id).update(
            banned_until=until, ban_reason=reason
        )
        _tell_player(player_id)
        ban = ModerationAction.objects.create(
            kind=ModerationAction.KIND_BAN,
            player_id=player_id,
            moderator_id=moderator_id,
            reason=reason,
            scope={"until": until.isoformat(), "rollback_hours": rollback_hours},
        )
    _logged(ban)
    ban.rollbacks = []  # the rollbacks this ban made, one per canvas
    if rollback_hours:
        since = now - timedelta(hours=rollback_hours)
        scope = Scope(player_ids=(player_id,), since=since)
        canvas_ids = (
            Placement.objects.filter(player_id=player_id, placed_at__gte=since)
            .values_list("canvas_id", flat=True)
            .distinct()
        )
        for canvas_id in sorted(canvas_ids):
            rollback = placements_rollback(
                canvas_id=canvas_id,
                scope=scope,
                reason=reason,
                moderator_id=moderator_id,
                player_id=player_id,
            )
            if rollback.pk is not None:
                ban.rollbacks.append(rollback)
    return ban


def _tell_player(player_id: int) -> None:
    """Once committed, the player's open pages hear of the ban or its end."""
    broadcast.player_changed(
        player_id=player_id,
        canvas_ids=selectors.player_canvases_open(player_id=player_id),
    )


def player_unban(
    *, player_id: int, reason: str, moderator_id: int | None = None
) -> ModerationAction:
    _reason_check(reason)
    with transaction.atomic():
        player = (
            Player.objects.select_for_update().only("banned_until").get(pk=player_id)
        )
        # Not banned (never, lifted, or ended): nothing to lift, nothing to record.
        if player.banned_until is None or player.banned_until <= timezone.now():
            raise ModerationError(MSG_NOT_BANNED)
        Player.objects.filter(pk=player_id).update(banned_until=None, ban_reason="")
        _tell_player(player_id)
        unban = ModerationAction.objects.create(
            kind=ModerationAction.KIND_UNBAN,
            player_id=player_id,
            moderator_id=moderator_id,
            reason=reason,
        )
    return _logged(unban)


def canvas_set_open(
    *, canvas_id: int, is_open: bool, reason: str, moderator_id: int | None = None
) -> ModerationAction:
    """Pause or resume a canvas; placements are refused with canvas_closed at once.

    Asking for the state the canvas is in already is refused, not recorded: a
    second "pause" (another moderator's, a form sent again) must not resume it.
    """
    _reason_check(reason)
    with transaction.atomic():
        canvas = Canvas.objects.select_for_update().only("is_open").get(pk=canvas_id)
        if canvas.is_open == is_open:
            raise ModerationError(MSG_ALREADY_OPEN if is_open else MSG_ALREADY_PAUSED)
        Canvas.objects.filter(pk=canvas_id).update(is_open=is_open)
        action = ModerationAction.objects.create(
            kind=ModerationAction.KIND_RESUME
            if is_open
            else ModerationAction.KIND_PAUSE,
            canvas_id=canvas_id,
            moderator_id=moderator_id,
            reason=reason,
        )
        broadcast.canvas_changed(canvas_id=canvas_id)
    return _logged(action)


def canvas_set_cooldown(
    *,
    canvas_id: int,
    cooldown_seconds: int,
    reason: str,
    moderator_id: int | None = None,
) -> ModerationAction:
    """Change the cooldown; running cooldowns longer than the new one are shortened."""
    _reason_check(reason)
    if not 0 <= cooldown_seconds <= services.MAX_COOLDOWN:
        raise ModerationError(MSG_BAD_COOLDOWN)
    now = timezone.now()
    with transaction.atomic():
        canvas = Canvas.objects.select_for_update().get(pk=canvas_id)
        previous = canvas.cooldown_seconds
        if previous == cooldown_seconds:  # no running cooldown is longer either
            raise ModerationError(MSG_SAME_COOLDOWN)
        canvas.cooldown_seconds = cooldown_seconds
        canvas.save(update_fields=["cooldown_seconds"])
        latest = now + timedelta(seconds=cooldown_seconds)
        Cooldown.objects.filter(canvas_id=canvas_id, next_at__gt=latest).update(
            next_at=latest
        )
        action = ModerationAction.objects.create(
            kind=ModerationAction.KIND_COOLDOWN,
            canvas_id=canvas_id,
            moderator_id=moderator_id,
            reason=reason,
            scope={"from": previous, "to": cooldown_seconds},
        )
        broadcast.canvas_changed(canvas_id=canvas_id)
    return _logged(action)


def _logged(action: ModerationAction) -> ModerationAction:
    """One key=value line per recorded action, like placements' (logger
    canvas.moderation): who did what, where, to whom, with what effect."""
    if action.pk is not None:
        events.info(
            "event=moderation action=%s kind=%s canvas=%s player=%s moderator=%s"
            " placements=%s pixels=%s scope=%s reason=%s",
            action.pk,
            action.kind,
            action.canvas_id,
            action.player_id,
            action.moderator_id,
            action.placements_count,
            action.pixels_count,
            json.dumps(action.scope, separators=(",", ":"), sort_keys=True),
            json.dumps(action.reason),
        )
    return action
