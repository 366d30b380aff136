"""Reads: canvases, board snapshots, pixel info, cooldowns and change history."""

import io
import threading
from dataclasses import dataclass
from datetime import datetime
from importlib import import_module
from types import SimpleNamespace

from django.conf import settings
from django.contrib import auth
from django.utils import timezone
from PIL import Image

from . import exceptions as exc
from .models import CHUNK_SIZE, Canvas, Chunk, Connection, Cooldown, Placement
from .protocol import Update


def session_user(session_key: str | None):
    """The user logged in on that session, or None.

    Django's own check (auth.get_user), so a session whose password hash is
    stale, or that never existed, gives nobody, exactly as on the HTTP side.
    """
    if not session_key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = auth.get_user(SimpleNamespace(session=store))
    return user if user.is_authenticated else None


@dataclass(frozen=True)
class Snapshot:
    data: bytes
    seq: int
    etag: str


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


def canvas_by_id(*, canvas_id: int) -> Canvas:
    return Canvas.objects.get(pk=canvas_id)


def canvas_seq(*, canvas_id: int) -> int:
    return Canvas.objects.filter(pk=canvas_id).values_list("seq", flat=True).get()


def board_assemble(canvas: Canvas) -> bytes:
    """Read every chunk and lay them out row-major, one byte per pixel."""
    width, height = canvas.width, canvas.height
    board = bytearray(width * height)
    rows = Chunk.objects.filter(canvas_id=canvas.pk).values_list("cx", "cy", "data")
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


class _SnapshotCache:
    """The newest snapshot per canvas in this process, keyed by its seq."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.boards: dict[int, Snapshot] = {}
        self.pngs: dict[int, tuple[str, bytes]] = {}


_cache = _SnapshotCache()


def board_snapshot(*, canvas: Canvas) -> Snapshot:
    """The board bytes with the seq of the newest change they include.

    The seq is read before the chunks, so the bytes are at least that new;
    replaying changes above the seq onto them is idempotent.
    """
    seq = canvas_seq(canvas_id=canvas.pk)
    etag = f'"{canvas.pk}-{canvas.width}x{canvas.height}-{seq}"'
    cached = _cache.boards.get(canvas.pk)
    if cached is not None and cached.etag == etag:
        return cached
    snapshot = Snapshot(data=board_assemble(canvas), seq=seq, etag=etag)
    with _cache.lock:
        _cache.boards[canvas.pk] = snapshot
    return snapshot


def board_png(*, canvas: Canvas) -> tuple[str, bytes]:
    """The board as a PNG, cached per seq like the bytes."""
    snapshot = board_snapshot(canvas=canvas)
    cached = _cache.pngs.get(canvas.pk)
    if cached is not None and cached[0] == snapshot.etag:
        return cached
    image = Image.frombytes("P", (canvas.width, canvas.height), snapshot.data)
    image.putpalette(palette_rgb(canvas.palette))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=1)
    result = (snapshot.etag, out.getvalue())
    with _cache.lock:
        _cache.pngs[canvas.pk] = result
    return result


def palette_rgb(palette: list[str]) -> list[int]:
    flat: list[int] = []
    for colour in palette:
        flat += [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return flat


def pixel_info(*, canvas: Canvas, x: int, y: int) -> PixelInfo:
    """Current colour of a pixel and the placement that shows there, if any."""
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
    if latest is None:
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


def connections_from(*, ip: str) -> int:
    return Connection.objects.filter(ip=ip).count()
