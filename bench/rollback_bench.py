"""Rollback at scale on PostgreSQL: time, and how long live placements wait meanwhile.

    .venv/bin/python bench/rollback_bench.py [--placements 100000] [--pg URL]

Makes a fresh database, fills a 1000x1000 canvas with a griefer's placements
interleaved with other players' (half of the griefer's later painted over), rolls
the griefer back with the same service admin and `manage.py rollback` use, while
one thread keeps placing pixels and records each placement's latency. Appends
the figures under "## rollback" in bench/RESULTS.md; the goal is under 10 s.
"""

import argparse
import os
import platform
import random
import statistics
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## rollback"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--placements", type=int, default=100_000)
    parser.add_argument(
        "--pg", default="postgres://postgres@127.0.0.1:5432/postgres", help="admin URL"
    )
    parser.add_argument("--no-record", action="store_true")
    return parser.parse_args()


def database_create(admin_url: str) -> tuple[str, callable]:
    import psycopg

    name = "place_rollback_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return admin_url.rsplit("/", 1)[0] + "/" + name, drop


def fill(canvas, griefer, others, count: int) -> None:
    """`count` griefer placements, every other one painted over by another player."""
    from django.db import transaction
    from django.utils import timezone

    from canvas import services
    from canvas.models import Placement

    rng = random.Random(1)
    board = bytearray(canvas.width * canvas.height)
    rows, changes = [], {}
    start = timezone.now() - timedelta(hours=1)
    seq = 0
    for i in range(count):
        x, y = rng.randrange(canvas.width), rng.randrange(canvas.height)
        for player, color in [(griefer, 3)] + [(rng.choice(others), 12)] * (i % 2):
            seq += 1
            offset = y * canvas.width + x
            rows.append(
                Placement(
                    canvas=canvas,
                    seq=seq,
                    x=x,
                    y=y,
                    color=color,
                    previous_color=board[offset],
                    player=player,
                    placed_at=start + timedelta(microseconds=seq),
                )
            )
            board[offset] = color
            changes[(x, y)] = color
    with transaction.atomic():
        Placement.objects.bulk_create(rows, batch_size=5000)
        services.chunks_apply(
            canvas_id=canvas.pk, changes=[(x, y, c) for (x, y), c in changes.items()]
        )
        type(canvas).objects.filter(pk=canvas.pk).update(seq=seq)


def live_placer(canvas_id: int, player_id: int, stop: threading.Event, out: list):
    """Place pixels back to back; record each placement's latency in seconds."""
    from django.db import connection

    from canvas import services

    rng = random.Random(2)
    try:
        while not stop.is_set():
            began = time.perf_counter()
            services.placement_create(
                canvas_id=canvas_id,
                player_id=player_id,
                x=rng.randrange(1000),
                y=rng.randrange(1000),
                color=7,
            )
            out.append(time.perf_counter() - began)
    finally:
        connection.close()


def record(lines: list[str]) -> None:
    """Append a block under this benchmark's heading, leaving other sections alone."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = "\n".join(lines) + "\n"
    if HEADING not in text.splitlines():
        text = text.rstrip("\n") + f"\n\n{HEADING}\n\n{block}"
    else:
        head, _, tail = text.partition(f"\n{HEADING}\n")
        nxt = tail.find("\n## ")
        section, rest = (tail, "") if nxt < 0 else (tail[:nxt], tail[nxt:])
        text = f"{head}\n{HEADING}\n{section.rstrip()}\n\n{block}{rest}"
    RESULTS.write_text(text)


def main() -> None:
    args = parse_args()
    url, drop = database_create(args.pg)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "placeproject.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    from canvas import moderation, services
    from canvas.models import Placement, Player

    try:
        call_command("migrate", verbosity=0)
        canvas, _ = services.canvas_create_or_update(
            slug="bench", width=1000, height=1000, cooldown_seconds=0
        )
        griefer = Player.objects.create(name="griefer")
        others = [Player.objects.create(name=f"p{i}") for i in range(50)]
        live = Player.objects.create(name="live")
        began = time.perf_counter()
        fill(canvas, griefer, others, args.placements)
        fill_s = time.perf_counter() - began

        stop, latencies = threading.Event(), []
        placer = threading.Thread(
            target=live_placer, args=(canvas.pk, live.pk, stop, latencies)
        )
        placer.start()
        time.sleep(0.5)
        before = len(latencies)
        began = time.perf_counter()
        action = moderation.placements_rollback(
            canvas_id=canvas.pk,
            scope=moderation.Scope(player_ids=(griefer.pk,)),
            reason="bench",
        )
        elapsed = time.perf_counter() - began
        during = latencies[before:]
        stop.set()
        placer.join()
        left = Placement.objects.filter(player=griefer, rolled_back=False).count()
    finally:
        from django.db import connections

        connections.close_all()
        drop()

    worst = max(during) * 1000 if during else float("nan")
    median = statistics.median(during) * 1000 if during else float("nan")
    lines = [
        f"### {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}",
        "",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; PostgreSQL",
        f"- command: `.venv/bin/python bench/rollback_bench.py "
        f"--placements {args.placements}`",
        f"- history: {Placement.__name__} rows filled in {fill_s:.1f} s; "
        f"griefer placements {args.placements}, half painted over by others",
        f"- rollback: **{elapsed:.2f} s** for {action.placements_count} placements, "
        f"{action.pixels_count} pixels changed (goal: under 10 s); "
        f"griefer placements left unrolled: {left}",
        f"- live placements during the rollback: {len(during)}, median "
        f"{median:.1f} ms, worst {worst:.0f} ms",
    ]
    print("\n".join(lines))
    if not args.no_record:
        record(lines)


if __name__ == "__main__":
    main()
