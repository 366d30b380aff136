"""Writes: canvases, players and placements, each atomic and typed."""

import functools
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from . import broadcast, selectors
from . import exceptions as exc
from .models import (
    CHUNK_SIZE,
    PALETTE_2017,
    Canvas,
    Chunk,
    Connection,
    Cooldown,
    IpQuota,
    Placement,
    Player,
)
from .sql import binding_cursor, int_array, marks, slices

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# A year: beyond any sensible canvas, and far inside what dates can hold.
MAX_COOLDOWN = 365 * 24 * 3600


@dataclass(frozen=True)
class PlacementResult:
    seq: int
    cooldown_remaining: float


def canvas_create_or_update(
    *,
    slug: str,
    width: int | None = None,
    height: int | None = None,
    cooldown_seconds: int | None = None,
    title: str | None = None,
) -> tuple[Canvas, bool]:
    """Create a canvas (white, 2017 palette), or update the given fields of one."""
    for name, value in (("width", width), ("height", height)):
        if value is not None and not 1 <= value <= 10000:
            raise ValueError(f"{name} must be between 1 and 10000")
    if cooldown_seconds is not None and not 0 <= cooldown_seconds <= MAX_COOLDOWN:
        raise ValueError(f"cooldown must be between 0 and {MAX_COOLDOWN} seconds")
    # The columns' limits, as an error here rather than a database's (SQLite
    # would store anything).
    for name, value in (("slug", slug), ("title", title)):
        limit = Canvas._meta.get_field(name).max_length
        if value is not None and len(value) > limit:
            raise ValueError(f"{name} must be at most {limit} characters")
    with transaction.atomic():
        # Locked first, as placements lock it before their chunks: a resize
        # rewrites every chunk, and snapshots rely on that order.
        canvas = Canvas.objects.select_for_update().filter(slug=slug).first()
        if canvas is None:
            canvas = Canvas.objects.create(
                slug=slug,
                title=title if title is not None else slug,
                width=width or 1000,
                height=height or 1000,
                palette=list(PALETTE_2017),
                cooldown_seconds=300 if cooldown_seconds is None else cooldown_seconds,
            )
            _chunks_create(canvas)
            return canvas, True
        resized = (width or canvas.width, height or canvas.height) != (
            canvas.width,
            canvas.height,
        )
        if title is not None:
            canvas.title = title
        if cooldown_seconds is not None:
            canvas.cooldown_seconds = cooldown_seconds
        if resized:
            _canvas_resize(canvas, width or canvas.width, height or canvas.height)
        canvas.save()
    broadcast.canvas_changed(canvas_id=canvas.pk)
    return canvas, False


def _chunks_create(canvas: Canvas) -> None:
    blank = bytes(CHUNK_SIZE * CHUNK_SIZE)
    Chunk.objects.bulk_create(
        Chunk(canvas=canvas, cx=cx, cy=cy, data=blank)
        for cy in range(canvas.chunks_y)
        for cx in range(canvas.chunks_x)
    )


def _canvas_resize(canvas: Canvas, width: int, height: int) -> None:
    """Keep the pixels that still fit; new area is background (index 0).

    Call with the canvas row locked. The board changes without a seq, so the
    epoch moves instead, and a shrink is recorded for pixel info.
    """
    from .selectors import board_assemble

    old = board_assemble(canvas)
    old_width, old_height = canvas.width, canvas.height
    if width < old_width or height < old_height:
        canvas.shrinks = [*canvas.shrinks, [canvas.seq, width, height]]
    canvas.epoch += 1
    canvas.width, canvas.height = width, height
    Chunk.objects.filter(canvas=canvas).delete()
    _chunks_create(canvas)
    keep_w, keep_h = min(width, old_width), min(height, old_height)
    changes = [
        (x, y, old[y * old_width + x])
        for y in range(keep_h)
        for x in range(keep_w)
        if old[y * old_width + x]
    ]
    chunks_apply(canvas_id=canvas.pk, changes=changes)


def chunks_read(*, canvas_id: int, keys: list[tuple[int, int]]) -> dict:
    """The touched chunks' bytes by (cx, cy), in one query per few thousand keys."""
    table = connection.ops.quote_name(Chunk._meta.db_table)
    chunks: dict[tuple[int, int], bytearray] = {}
    if connection.vendor == "postgresql":
        # Two integer arrays in, bytes out (binary results: no hex to decode).
        with binding_cursor() as cursor:
            for part in slices(keys, 5000):
                cursor.execute(
                    "WITH k(cx, cy) AS (SELECT * FROM unnest(%s::integer[],"
                    f" %s::integer[])) SELECT c.cx, c.cy, c.data FROM {table} c"
                    " JOIN k ON c.cx = k.cx AND c.cy = k.cy WHERE c.canvas_id = %s",
                    [[k[0] for k in part], [k[1] for k in part], canvas_id],
                    binary=True,
                    prepare=False,
                )
                for cx, cy, data in cursor.fetchall():
                    chunks[(cx, cy)] = bytearray(data)
        return chunks
    with connection.cursor() as cursor:
        for part in slices(keys, 400):
            cursor.execute(
                "WITH k(cx, cy) AS (VALUES "
                + ",".join(["(%s, %s)"] * len(part))
                + f") SELECT c.cx, c.cy, c.data FROM {table} c"
                " JOIN k ON c.cx = k.cx AND c.cy = k.cy WHERE c.canvas_id = %s",
                [*(v for key in part for v in key), canvas_id],
            )
            for cx, cy, data in cursor.fetchall():
                chunks[(cx, cy)] = bytearray(data)
    return chunks


def chunks_write(*, canvas_id: int, chunks: dict) -> None:
    table = connection.ops.quote_name(Chunk._meta.db_table)
    if connection.vendor == "postgresql":
        # One UPDATE per 500 chunks, their bytes bound in binary: a group
        # commit's ~250 chunks took 18 ms of the writer's CPU as one statement
        # each (pipelined), 10 less this way, and no more of the database's.
        # (500 x 4 KB stays within PostgreSQL's default work_mem.)
        keys = sorted(chunks)
        with binding_cursor() as cursor:
            for part in slices(keys, 500):
                cursor.execute(
                    f"UPDATE {table} AS c SET data = v.data FROM unnest("
                    "%b::integer[], %b::integer[], %b::bytea[]) AS v(cx, cy, data)"
                    " WHERE c.canvas_id = %b AND c.cx = v.cx AND c.cy = v.cy",
                    (
                        [cx for cx, _ in part],
                        [cy for _, cy in part],
                        [bytes(chunks[key]) for key in part],
                        canvas_id,
                    ),
                    # Not prepared: PgBouncer in transaction mode cannot keep
                    # prepared statements.
                    prepare=False,
                )
                _all_written(canvas_id, part, cursor.rowcount)
        return
    # SQLite: one UPDATE ... FROM (VALUES ...) per few hundred chunks, not one
    # step each: sqlite3 lets go of the GIL around every step, and the ingest
    # writer then waited to get it back behind the busy event loop, hundreds
    # of times a batch (bench/RESULTS.md, ingest).
    keys = sorted(chunks)
    per = (connection.features.max_query_params - 1) // 3
    with connection.cursor() as cursor:
        for part in slices(keys, per):
            cursor.execute(
                f"UPDATE {table} AS c SET data = v.column3"
                f" FROM (VALUES {','.join(['(%s, %s, %s)'] * len(part))}) AS v"
                " WHERE c.canvas_id = %s AND c.cx = v.column1 AND c.cy = v.column2",
                [
                    *(v for key in part for v in (*key, bytes(chunks[key]))),
                    canvas_id,
                ],
            )
            _all_written(canvas_id, part, cursor.rowcount)


def _all_written(canvas_id: int, part: list, rowcount: int) -> None:
    """Every chunk row exists for as long as its canvas: fewer rows written
    than chunks given is a bug to fail on, not a board to leave half drawn."""
    if rowcount != len(part):
        raise RuntimeError(
            f"canvas {canvas_id}: {len(part) - rowcount} of"
            f" {len(part)} chunk rows to write are missing"
        )


def chunks_apply(*, canvas_id: int, changes: list[tuple[int, int, int]]) -> list[int]:
    """Write (x, y, color) changes to the board; return each pixel's prior colour.

    Each touched chunk is read and written once. Call inside the transaction
    that also records the changes in history.
    """
    keys = sorted({(x // CHUNK_SIZE, y // CHUNK_SIZE) for x, y, _ in changes})
    chunks = chunks_read(canvas_id=canvas_id, keys=keys)
    previous = []
    for x, y, color in changes:
        data = chunks[(x // CHUNK_SIZE, y // CHUNK_SIZE)]
        offset = (y % CHUNK_SIZE) * CHUNK_SIZE + (x % CHUNK_SIZE)
        previous.append(data[offset])
        data[offset] = color
    chunks_write(canvas_id=canvas_id, chunks=chunks)
    return previous


def checked_again_if_resized(func):
    """Run `func` once more if a resize committed between its checks and its
    canvas lock (seqs_allocate's CanvasResized; its transaction wrote nothing):
    pixels checked against the old size might not exist any more."""

    @functools.wraps(func)
    def call(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except exc.CanvasResized:
            return func(*args, **kwargs)

    return call


def seqs_allocate(
    *, canvas_id: int, count: int, size: tuple[int, int] | None = None
) -> int:
    """Reserve `count` consecutive seqs; return the first. Locks the canvas row.

    The lock is held until commit, so changes commit in seq order. `size`: the
    (width, height) the caller checked its pixels against; if a resize has
    committed since, raises CanvasResized (roll back and check again).
    """
    table = connection.ops.quote_name(Canvas._meta.db_table)
    with connection.cursor() as cursor:
        # One round trip while others wait (RETURNING: SQLite 3.35+, as ingest).
        cursor.execute(
            f"UPDATE {table} SET seq = seq + %s WHERE id = %s"
            " RETURNING seq, width, height",
            [count, canvas_id],
        )
        last, width, height = cursor.fetchone()
    if size is not None and (width, height) != tuple(size):
        raise exc.CanvasResized
    return last - count + 1


def placements_insert(
    *, proto: Placement, varying: tuple[str, ...], rows: list[tuple]
) -> None:
    """Insert history rows that differ from `proto` only in the `varying` fields.

    Every other column takes proto's value, prepared once per call, so fields
    added to the model later with a default still get it; the ORM's per-object
    preparation was the single largest cost of a group commit. On PostgreSQL
    one statement, a column array per varying field.
    """
    if not rows:
        return
    fields = [f for f in Placement._meta.concrete_fields if not f.primary_key]
    fixed = {
        f.attname: f.get_db_prep_save(getattr(proto, f.attname), connection)
        for f in fields
        if f.attname not in varying
    }
    quote = connection.ops.quote_name
    column = {f.attname: quote(f.column) for f in fields}
    head = (
        f"INSERT INTO {quote(Placement._meta.db_table)} "
        f"({', '.join(column[name] for name in [*varying, *fixed])})"
    )
    constant = list(fixed.values())
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            types = {f.attname: f.db_type(connection) for f in fields}
            arrays = ", ".join(f"%s::{types[name]}[]" for name in varying)
            consts = ", ".join(f"%s::{types[name]}" for name in fixed)
            cursor.execute(
                f"{head} SELECT u.*, {consts} FROM unnest({arrays}) u",
                [*constant, *(int_array(c) for c in zip(*rows, strict=True))],
            )
            return
        # Many rows per statement, for the GIL's sake as in chunks_write.
        row = f"({marks(len(varying) + len(fixed))})"
        per = max(
            1, connection.features.max_query_params // (len(varying) + len(fixed))
        )
        for part in slices(rows, per):
            cursor.execute(
                f"{head} VALUES {','.join([row] * len(part))}",
                [v for values in part for v in (*values, *constant)],
            )


ANONYMOUS_PREFIX = "anon-"
# Attempts at a free generated name before settling for a taken one (with six
# hex digits, even a million players leave most names free).
ANONYMOUS_NAME_TRIES = 20


def anonymous_name(session_key: str, attempt: int = 0) -> str:
    salt = f":{attempt}" if attempt else ""
    digest = hashlib.sha256((session_key + salt).encode()).hexdigest()
    return ANONYMOUS_PREFIX + digest[:6]


def _anonymous_name_free(session_key: str) -> str:
    """A generated name no player or account has: moderators pick players by name."""
    User = get_user_model()
    for attempt in range(ANONYMOUS_NAME_TRIES):
        name = anonymous_name(session_key, attempt)
        # Exact matches (indexed): sign-up refuses anon- names in any case.
        taken = Player.objects.filter(name=name).exists() or (
            User.objects.filter(username=name).exists()
        )
        if not taken:
            return name
    return name


def player_for_user(*, user) -> Player:
    player = Player.objects.filter(user=user).first()
    if player is None:
        Player.objects.bulk_create(
            [Player(user=user, name=user.get_username())], ignore_conflicts=True
        )
        player = Player.objects.get(user=user)
    return player


def player_for_session(*, session_key: str) -> Player:
    player = Player.objects.filter(session_key=session_key).first()
    if player is None:
        Player.objects.bulk_create(
            [Player(session_key=session_key, name=_anonymous_name_free(session_key))],
            ignore_conflicts=True,
        )
        player = Player.objects.get(session_key=session_key)
    return player


def player_identify(*, user, session_key: str | None) -> Player | None:
    """The player behind a request or socket, or None for a watcher.

    Anonymous sessions count only when anonymous play is on and the session
    really exists, so a made-up cookie does not mint a fresh player.
    """
    if user is not None and user.is_authenticated:
        return player_for_user(user=user)
    if settings.PLACE_REQUIRE_LOGIN or not session_key:
        return None
    if not SessionStore().exists(session_key):
        return None
    return player_for_session(session_key=session_key)


def _cooldown_take(*, canvas: Canvas, player_id: int, now: datetime) -> None:
    """Start the player's cooldown if it has ended; raise PlaceError if not.

    One conditional UPDATE decides, so racing requests (other threads, other
    processes) cannot both pass: the database serialises writes to the row.
    """
    Cooldown.objects.bulk_create(
        [Cooldown(canvas=canvas, player_id=player_id, next_at=EPOCH)],
        ignore_conflicts=True,
    )
    next_at = now + timedelta(seconds=canvas.cooldown_seconds)
    taken = Cooldown.objects.filter(
        canvas=canvas, player_id=player_id, next_at__lte=now
    ).update(next_at=next_at)
    if not taken:
        current = Cooldown.objects.filter(
            canvas=canvas, player_id=player_id
        ).values_list("next_at", flat=True)
        remaining = (current.get() - now).total_seconds()
        raise exc.PlaceError("cooldown", exc.MSG_COOLDOWN, retry_after=remaining)


def _ip_quota_take(*, canvas: Canvas, ip: str | None, now: datetime) -> None:
    """Count a placement against its address (PLACE_IP_LIMIT per cooldown period).

    Like the cooldown, one conditional UPDATE decides, so it holds across
    processes: it either starts a new window or adds to one not yet full.
    """
    limit = settings.PLACE_IP_LIMIT
    if limit <= 0 or not ip:
        return
    period = timedelta(seconds=max(canvas.cooldown_seconds, 1))
    IpQuota.objects.bulk_create(
        [IpQuota(canvas=canvas, ip=ip, window_start=EPOCH, count=0)],
        ignore_conflicts=True,
    )
    rows = IpQuota.objects.filter(canvas=canvas, ip=ip)
    expired = rows.filter(window_start__lte=now - period)
    if expired.update(window_start=now, count=1):
        return
    if rows.filter(count__lt=limit).update(count=F("count") + 1):
        return
    window_start = rows.values_list("window_start", flat=True).get()
    retry = (window_start + period - now).total_seconds()
    raise exc.PlaceError("rate_limited", exc.MSG_IP_LIMIT, retry_after=retry)


def _player_age_check(*, player: Player, now: datetime) -> None:
    created = player.user.date_joined if player.user_id else player.created_at
    account_age_check(created=created, now=now)


def account_age_check(*, created: datetime, now: datetime) -> None:
    """Accounts younger than PLACE_MIN_ACCOUNT_AGE wait, like r/place's cut-off."""
    minimum = settings.PLACE_MIN_ACCOUNT_AGE
    if minimum <= 0:
        return
    wait = (created + timedelta(seconds=minimum) - now).total_seconds()
    if wait > 0:
        raise exc.PlaceError("cooldown", exc.MSG_ACCOUNT_TOO_NEW, retry_after=wait)


def placement_validate(
    *, canvas: Canvas, player: Player | None, x: int, y: int, color: int
) -> None:
    """Raise PlaceError for anything that refuses a placement before the cooldown."""
    player_check(known=player is not None, banned=bool(player and player.is_banned()))
    placement_check(canvas=canvas, x=x, y=y, color=color)


def player_check(*, known: bool, banned: bool) -> None:
    """The player's own refusals, checked first: not signed in, banned."""
    if not known:
        raise exc.PlaceError("login_required", exc.MSG_LOGIN_REQUIRED)
    if banned:
        raise exc.PlaceError("banned", exc.MSG_BANNED)


def placement_check(*, canvas: Canvas, x: int, y: int, color: int) -> None:
    """The canvas's refusals: closed, outside it, not in its palette."""
    if not canvas.is_open:
        raise exc.PlaceError("canvas_closed", exc.MSG_CANVAS_CLOSED)
    if not (0 <= x < canvas.width and 0 <= y < canvas.height):
        raise exc.PlaceError("out_of_bounds", exc.MSG_OUT_OF_BOUNDS)
    if not 0 <= color < len(canvas.palette):
        raise exc.PlaceError("invalid_color", exc.MSG_INVALID_COLOR)


@checked_again_if_resized
def placement_create(
    *,
    canvas_id: int,
    player_id: int | None,
    x: int,
    y: int,
    color: int,
    ip: str | None = None,
) -> PlacementResult:
    """Place one pixel: validate, take the cooldown, write board and history.

    The broadcast is queued for after commit; the caller acknowledges only when
    this returns, which is after commit.
    """
    with transaction.atomic():
        canvas = Canvas.objects.get(pk=canvas_id)
        player = (
            Player.objects.select_related("user").filter(pk=player_id).first()
            if player_id
            else None
        )
        placement_validate(canvas=canvas, player=player, x=x, y=y, color=color)
        now = timezone.now()
        _player_age_check(player=player, now=now)
        _cooldown_take(canvas=canvas, player_id=player.pk, now=now)
        _ip_quota_take(canvas=canvas, ip=ip, now=now)
        seq = seqs_allocate(
            canvas_id=canvas_id, count=1, size=(canvas.width, canvas.height)
        )
        (previous,) = chunks_apply(canvas_id=canvas_id, changes=[(x, y, color)])
        Placement.objects.create(
            canvas_id=canvas_id,
            seq=seq,
            x=x,
            y=y,
            color=color,
            previous_color=previous,
            player=player,
            placed_at=now,
        )
        broadcast.publish_on_commit(canvas_id=canvas_id, updates=[(seq, x, y, color)])
    return PlacementResult(seq=seq, cooldown_remaining=float(canvas.cooldown_seconds))


def connection_open(
    *,
    channel_name: str,
    canvas_id: int,
    player_id: int | None,
    server: str,
    ip: str | None,
    ip_limit: int = 0,
) -> None:
    """Record an open socket; TooManyConnections if its address is at `ip_limit`.

    Counting and inserting in one transaction, serialised per address, so a
    burst of handshakes cannot all pass the count before any row exists. On
    PostgreSQL an advisory lock on the address does that (a row lock would need
    a row); SQLite transactions here are IMMEDIATE, which serialises them all.
    Rows that stopped being refreshed (a dead process's) do not count.
    """
    with transaction.atomic():
        if ip_limit > 0 and ip:
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_advisory_xact_lock(%s)", [_ip_lock_key(ip)]
                    )
            if selectors.connections_held(ip=ip) >= ip_limit:
                raise exc.TooManyConnections(ip)
        Connection.objects.create(
            channel_name=channel_name,
            canvas_id=canvas_id,
            player_id=player_id,
            server=server,
            ip=ip,
        )


def _ip_lock_key(ip: str) -> int:
    """A signed 64-bit advisory-lock key for one address, apart from other locks."""
    digest = hashlib.blake2b(f"place:connections:{ip}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# Channel names per statement on SQLite: far under any parameter limit.
NAMES_PER_STATEMENT = 2000


def connections_close(*, channel_names: list[str]) -> None:
    """Delete the rows of closed sockets, in one statement on PostgreSQL."""
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(Connection._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"DELETE FROM {table} WHERE channel_name = ANY(%s)",
                [list(channel_names)],
            )
        return
    for start in range(0, len(channel_names), NAMES_PER_STATEMENT):
        chunk = channel_names[start : start + NAMES_PER_STATEMENT]
        Connection.objects.filter(channel_name__in=chunk).delete()


# What a socket's row holds besides its names: (canvas_id, player_id, ip).
RowFields = tuple[int, int | None, str | None]


def connections_heartbeat(
    *,
    server: str,
    channel_names: list[str],
    rows: dict[str, RowFields] | None = None,
) -> int:
    """Mark the sockets this process still holds as alive; return how many
    rows it had to write again.

    Only these: a row whose socket this process no longer holds (its task was
    killed before it could delete it, say) stops being refreshed and is swept
    as stale, instead of counting as online, and against its address, for as
    long as the process lives. And all of these: a row swept while this
    process could not beat (a database outage longer than the stale time) is
    written again from `rows`, or it would stay missing until its socket
    reconnected.
    """
    now = timezone.now()
    if connection.vendor == "postgresql":
        # One array parameter: the ORM's IN list of 10,000 names cost the
        # process ~0.1-0.25 s of CPU a beat, the array ~0.02 s.
        table = connection.ops.quote_name(Connection._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET last_seen = %s"
                " WHERE server = %s AND channel_name = ANY(%s)",
                [now, server, list(channel_names)],
            )
            refreshed = cursor.rowcount
    else:
        refreshed = 0
        for start in range(0, len(channel_names), NAMES_PER_STATEMENT):
            chunk = channel_names[start : start + NAMES_PER_STATEMENT]
            refreshed += Connection.objects.filter(
                server=server, channel_name__in=chunk
            ).update(last_seen=now)
    if not rows or refreshed >= len(channel_names):
        return 0
    present: set[str] = set()
    for start in range(0, len(channel_names), NAMES_PER_STATEMENT):
        chunk = channel_names[start : start + NAMES_PER_STATEMENT]
        present.update(
            Connection.objects.filter(channel_name__in=chunk).values_list(
                "channel_name", flat=True
            )
        )
    missing = [
        Connection(
            channel_name=name,
            canvas_id=rows[name][0],
            player_id=rows[name][1],
            ip=rows[name][2],
            server=server,
        )
        for name in channel_names
        if name not in present and name in rows
    ]
    Connection.objects.bulk_create(missing, ignore_conflicts=True)
    return len(missing)


def connections_sweep(*, stale_seconds: int, dead_servers: list[str] = ()) -> int:
    """Delete rows of processes that stopped refreshing them, or are known dead."""
    cutoff = timezone.now() - timedelta(seconds=stale_seconds)
    deleted, _ = Connection.objects.filter(last_seen__lt=cutoff).delete()
    if dead_servers:
        more, _ = Connection.objects.filter(server__in=list(dead_servers)).delete()
        deleted += more
    return deleted
