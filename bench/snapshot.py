"""Snapshot timings inside a Django process (run by bench/run.py with the env set).

Prints one JSON object: for each size, board bytes and PNG, warm (cached for the
current seq) and cold (cache emptied, assembled from the database), plus the
naive way (no cache at all: every request assembles and encodes).
"""

import functools
import json
import os
import random
import statistics
import sys
import time

import django

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "placeproject.settings")
django.setup()

from canvas import selectors, services  # noqa: E402
from canvas.models import Chunk  # noqa: E402


def timed(fn, repeat: int, before=None) -> dict:
    samples = []
    for _ in range(repeat):
        if before:
            before()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 3),
        "n": repeat,
    }


def fill(canvas) -> None:
    """Random pixels everywhere: the worst case for PNG size and speed."""
    rng = random.Random(1)
    for chunk in Chunk.objects.filter(canvas=canvas):
        chunk.data = bytes(rng.randrange(16) for _ in range(len(chunk.data)))
        chunk.save(update_fields=["data"])


def clear() -> None:
    selectors._cache.boards.clear()
    selectors._cache.pngs.clear()


def main() -> None:
    results = {}
    for size in (int(s) for s in sys.argv[1:] or ["1000", "2000"]):
        canvas, _ = services.canvas_create_or_update(
            slug=f"snap{size}", width=size, height=size, cooldown_seconds=0
        )
        fill(canvas)
        snap = functools.partial(selectors.board_snapshot, canvas=canvas)
        png = functools.partial(selectors.board_png, canvas=canvas)
        snap()
        png()
        results[f"{size}x{size}"] = {
            "bytes": len(snap().data),
            "png_bytes": len(png()[1]),
            "board_warm": timed(snap, 200),
            "board_cold": timed(snap, 20, before=clear),
            "png_warm": timed(png, 200),
            "png_cold": timed(png, 10, before=clear),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
