"""The group-commit path alone, in one process: no WebSockets, no broadcast.

Run by bench/run.py (ingest) with the environment of a fresh stack; prints JSON:
accepted placements/s through `ingest.placements_commit` for several batch
sizes, uniformly random pixels on a 1000x1000 canvas (the worst case: nearly
every 64x64 chunk is rewritten by every large batch), cooldown 0, a distinct
player per placement, every cooldown still checked in the database. Last, the
same at batch 500 on a full board (every pixel coloured at random, as late in an
event: chunks then compress worst).
"""

import json
import os
import random
import sys
import time

import django

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "placeproject.settings")
django.setup()

from canvas import ingest, services  # noqa: E402
from canvas.models import CHUNK_SIZE, Player  # noqa: E402


def main() -> None:
    canvas, _ = services.canvas_create_or_update(
        slug="commitpath", width=1000, height=1000, cooldown_seconds=0
    )
    Player.objects.bulk_create(Player(name=f"c{i}") for i in range(2000))
    players = list(Player.objects.values_list("pk", flat=True)[:2000])
    rng = random.Random(0)
    out = {}
    for size in (100, 500, 1000, 2000):
        out[str(size)] = _measure(canvas, players, rng, size)
    services.chunks_write(
        canvas_id=canvas.pk,
        chunks={
            (cx, cy): bytearray(rng.randrange(32) for _ in range(CHUNK_SIZE**2))
            for cx in range(canvas.chunks_x)
            for cy in range(canvas.chunks_y)
        },
    )
    out["500, full board"] = _measure(canvas, players, rng, 500)
    print(json.dumps(out))


def _measure(canvas, players: list[int], rng: random.Random, size: int) -> dict:
    rounds = max(3, 6000 // size)
    accepted = 0
    start = time.perf_counter()
    for _ in range(rounds):
        batch = [
            ingest.PlaceRequest(
                canvas.pk, players[i], rng.randrange(1000), rng.randrange(1000), 5
            )
            for i in range(size)
        ]
        outcomes = ingest.placements_commit(batch)
        accepted += sum(isinstance(o, services.PlacementResult) for o in outcomes)
    elapsed = time.perf_counter() - start
    return {
        "per_s": round(accepted / elapsed),
        "ms_per_batch": round(elapsed / rounds * 1000, 1),
    }


if __name__ == "__main__":
    main()
