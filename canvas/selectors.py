"""Reads: canvases, board snapshots, pixel info, cooldowns and change history."""

import gzip
import hashlib
import io
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib import auth
from django.db import connection, transaction
from django.utils import timezone
from PIL import Image

from . import exceptions as exc
from .models import (
    CHUNK_SIZE,
    Canvas,
    Chunk,
    Connection,
    Cooldown,
    Placement,
    Player,
)
from .protocol import Update


def session_identity(session_key: str | None) -> tuple[object | None, str | None]:
    """The user logged in on that session (or None), and the key if it is live.

    Django's own checks: auth.get_user (a stale password hash or an inactive
    user gives nobody) and the session store's load, which treats an expired
    or unknown session as none at all, exactly as on the HTTP side.
    """
    if not session_key:
        return None, None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(SimpleNamespace(session=store))
    live_key = store.session_key  # None once load() found it missing or expired
    return (user if user.is_authenticated else None), live_key


@dataclass(frozen=True)
class Snapshot:
    data: bytes
    seq: int
    etag: str
    width: int
    height: int


@dataclass(frozen=True)
class PixelInfo:
    x: int
    y: int
    color: int
    placed_by: str | None
    placed_at: datetime | None


def canvas_get(*, slug: str) -> Canvas:
    canvas = Canvas.objects.filter(slug=slug).first()
    if canvas is None:
        raise exc.CanvasNotFound(slug)
    return canvas


def canvas_seq(*, canvas_id: int) -> int:
    return Canvas.objects.filter(pk=canvas_id).values_list("seq", flat=True).get()


@dataclass(frozen=True)
class CanvasState:
    """What a hub polls each period: the newest seq and the settings players see."""

    seq: int
    cooldown_seconds: int
    is_open: bool
    width: int
    height: int

    @property
    def settings(self) -> tuple:
        return (self.cooldown_seconds, self.is_open, self.width, self.height)


def canvas_state(*, canvas_id: int) -> CanvasState:
    row = (
        Canvas.objects.filter(pk=canvas_id)
        .values_list("seq", "cooldown_seconds", "is_open", "width", "height")
        .get()
    )
    return CanvasState(*row)


def board_assemble(canvas: Canvas) -> bytes:
    """Read every chunk and lay them out row-major, one byte per pixel."""
    rows = Chunk.objects.filter(canvas_id=canvas.pk).values_list("cx", "cy", "data")
    return _board_layout(list(rows), canvas.width, canvas.height)


def _board_layout(rows: list, width: int, height: int) -> bytes:
    board = bytearray(width * height)
    for cx, cy, data in rows:
        data = bytes(data)
        x0, y0 = cx * CHUNK_SIZE, cy * CHUNK_SIZE
        span = min(CHUNK_SIZE, width - x0)
        for row in range(min(CHUNK_SIZE, height - y0)):
            start = (y0 + row) * width + x0
            board[start : start + span] = data[
                row * CHUNK_SIZE : row * CHUNK_SIZE + span
            ]
    return bytes(board)


@dataclass(frozen=True)
class BoardVersion:
    """What identifies the board's bytes: any change moves seq or epoch."""

    canvas_id: int
    created_at: datetime
    epoch: int
    width: int
    height: int
    seq: int

    @property
    def etag(self) -> str:
        # The creation time too: an id can come back after a canvas is deleted.
        born = int(self.created_at.timestamp()) * 10**6 + self.created_at.microsecond
        size = f"{self.width}x{self.height}"
        return f'"{self.canvas_id}.{born:x}-{self.epoch}-{size}-{self.seq}"'


def _board_version(canvas_id: int, *, lock: bool = False) -> BoardVersion:
    """The canvas's board version; `lock` waits for and holds off its writers.

    Every writer locks the canvas row before it touches chunks. On PostgreSQL
    FOR SHARE waits for the ones in flight and keeps new ones out until the
    transaction ends, without blocking other readers. SQLite transactions start
    IMMEDIATE here (settings), which already serialises them with writers.
    """
    fields = ("created_at", "epoch", "width", "height", "seq")
    if lock and connection.vendor == "postgresql":
        table = connection.ops.quote_name(Canvas._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {', '.join(fields)} FROM {table} WHERE id = %s FOR SHARE",
                [canvas_id],
            )
            row = cursor.fetchone()
        if row is None:
            raise Canvas.DoesNotExist(canvas_id)
    else:
        row = Canvas.objects.filter(pk=canvas_id).values_list(*fields).get()
    return BoardVersion(canvas_id, *row)


class _SnapshotCache:
    """The newest snapshot per canvas in this process, keyed by its ETag."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.boards: dict[int, Snapshot] = {}
        self.pngs: dict[int, tuple[str, bytes]] = {}
        self.gzipped: dict[int, tuple[str, bytes]] = {}


_cache = _SnapshotCache()


def board_snapshot(*, canvas: Canvas) -> Snapshot:
    """The board bytes with exactly the seq of the newest change they include.

    Warm, one small query: the cached snapshot still holds while the version
    (seq, epoch, size) is unchanged, since every board write moves one of them.
    """
    version = _board_version(canvas.pk)
    cached = _cache.boards.get(canvas.pk)
    if cached is not None and cached.etag == version.etag:
        return cached
    snapshot = _snapshot_read(canvas.pk)
    with _cache.lock:
        _cache.boards[canvas.pk] = snapshot
    return snapshot


def _snapshot_read(canvas_id: int) -> Snapshot:
    """Version and chunks from one consistent state of the database.

    On PostgreSQL a REPEATABLE READ transaction gives one snapshot for both
    reads without blocking writers: a writer bumps the seq and its chunks in one
    transaction, so the snapshot holds all of it or none. (Holding the canvas
    row FOR SHARE instead stalled placement commits behind every cold read.)
    Only an outermost transaction can choose its isolation; nested in another
    (tests), the row lock keeps it exact. SQLite's IMMEDIATE transactions are
    already serialised with writers.
    """
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        snapshot = outermost and connection.vendor == "postgresql"
        if snapshot:
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        version = _board_version(canvas_id, lock=not snapshot)
        rows = list(
            Chunk.objects.filter(canvas_id=canvas_id).values_list("cx", "cy", "data")
        )
    # Laid out after commit, so writers wait only for the read.
    return Snapshot(
        data=_board_layout(rows, version.width, version.height),
        seq=version.seq,
        etag=version.etag,
        width=version.width,
        height=version.height,
    )


def board_gzipped(snapshot: Snapshot, *, canvas_id: int) -> bytes:
    """The snapshot's bytes gzipped, cached per ETag.

    A board is mostly long runs of one colour: 1000² is a megabyte raw and
    a few kilobytes gzipped, which is most of a page load on a phone.
    """
    cached = _cache.gzipped.get(canvas_id)
    if cached is not None and cached[0] == snapshot.etag:
        return cached[1]
    # Level 1: the runs compress nearly as well as at 9, several times faster.
    data = gzip.compress(snapshot.data, compresslevel=1, mtime=0)
    with _cache.lock:
        _cache.gzipped[canvas_id] = (snapshot.etag, data)
    return data


def board_png(*, canvas: Canvas) -> tuple[str, bytes]:
    """The board as a PNG, cached per board ETag and palette.

    The palette is in the PNG's ETag too: a moderator may recolour it in the
    admin without any pixel (or the board's own ETag) changing.
    """
    snapshot = board_snapshot(canvas=canvas)
    colours = hashlib.sha1("".join(canvas.palette).encode()).hexdigest()[:10]
    etag = f'{snapshot.etag[:-1]}-{colours}"'
    cached = _cache.pngs.get(canvas.pk)
    if cached is not None and cached[0] == etag:
        return cached
    image = Image.frombytes("P", (snapshot.width, snapshot.height), snapshot.data)
    image.putpalette(palette_rgb(canvas.palette))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=1)
    result = (etag, out.getvalue())
    with _cache.lock:
        _cache.pngs[canvas.pk] = result
    return result


def palette_rgb(palette: list[str]) -> list[int]:
    flat: list[int] = []
    for colour in palette:
        flat += [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return flat


def pixel_info(*, canvas: Canvas, x: int, y: int) -> PixelInfo:
    """Current colour of a pixel and the placement that shows there, if any.

    None shows if a resize wiped the pixel after its newest placement.
    """
    if not (0 <= x < canvas.width and 0 <= y < canvas.height):
        raise exc.PlaceError("out_of_bounds", exc.MSG_OUT_OF_BOUNDS)
    chunk = (
        Chunk.objects.filter(
            canvas_id=canvas.pk, cx=x // CHUNK_SIZE, cy=y // CHUNK_SIZE
        )
        .values_list("data", flat=True)
        .get()
    )
    color = bytes(chunk)[(y % CHUNK_SIZE) * CHUNK_SIZE + x % CHUNK_SIZE]
    latest = (
        Placement.objects.filter(
            canvas_id=canvas.pk, x=x, y=y, kind=Placement.KIND_PLACE, rolled_back=False
        )
        .select_related("player")
        .order_by("-seq")
        .first()
    )
    if latest is None or canvas.cleared_since(x=x, y=y, seq=latest.seq):
        return PixelInfo(x=x, y=y, color=color, placed_by=None, placed_at=None)
    name = latest.player.name if latest.player else None
    return PixelInfo(x=x, y=y, color=color, placed_by=name, placed_at=latest.placed_at)


def changes_between(*, canvas_id: int, after: int, upto: int) -> list[Update]:
    """Every change with after < seq <= upto, in seq order (hub gap refill)."""
    rows = (
        Placement.objects.filter(canvas_id=canvas_id, seq__gt=after, seq__lte=upto)
        .order_by("seq")
        .values_list("seq", "x", "y", "color")
    )
    return [tuple(row) for row in rows]


def cooldown_remaining(*, canvas: Canvas, player_id: int | None) -> float:
    if player_id is None:
        return 0.0
    next_at = (
        Cooldown.objects.filter(canvas=canvas, player_id=player_id)
        .values_list("next_at", flat=True)
        .first()
    )
    if next_at is None:
        return 0.0
    return max(0.0, (next_at - timezone.now()).total_seconds())


def connections_online(*, canvas_id: int) -> int:
    return Connection.objects.filter(canvas_id=canvas_id).count()


def connections_held(*, ip: str) -> int:
    """Open sockets from `ip`, counting only rows a live process refreshes."""
    cutoff = timezone.now() - timedelta(seconds=settings.PLACE_CONNECTION_STALE_SECONDS)
    return Connection.objects.filter(ip=ip, last_seen__gte=cutoff).count()


def player_ban(*, player_id: int) -> tuple[datetime, str] | None:
    """(until, reason) while the player is banned, else None."""
    player = Player.objects.filter(pk=player_id).first()
    if player is None or not player.is_banned():
        return None
    return player.banned_until, player.ban_reason


def player_canvases_open(*, player_id: int) -> list[int]:
    """Canvases on which the player has a socket open (any process)."""
    rows = Connection.objects.filter(player_id=player_id)
    return sorted(set(rows.values_list("canvas_id", flat=True)))
