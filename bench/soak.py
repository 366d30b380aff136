"""Soak: minutes of mixed load on two daphne processes (PostgreSQL + Redis).

Players place, watchers come and go, browsers fetch the board; afterwards the
servers' memory must be flat (RSS growth under 10 % after warm-up), no
`Connection` row may be left behind, and the board must equal a replay of the
history table.

    .venv/bin/python bench/soak.py --minutes 10   # records in docs/reliability.md
    .venv/bin/python bench/soak.py --minutes 1 --no-record
"""

import argparse
import asyncio
import contextlib
import os
import platform
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live import make_stack  # noqa: E402
from tests.wsclient import Player, anonymous_cookie  # noqa: E402

WIDTH = HEIGHT = 200


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


async def placer(ws: str, cookie: str, stop: float, stats: dict) -> None:
    while time.monotonic() < stop:
        try:
            async with Player(ws, "soak", cookie=cookie) as p:
                while time.monotonic() < stop:
                    x, y = random.randrange(WIDTH), random.randrange(HEIGHT)
                    result = await p.place(x, y, random.randrange(16))
                    key = (
                        result["type"]
                        if result["type"] == "accepted"
                        else result["code"]
                    )
                    stats[key] = stats.get(key, 0) + 1
                    await asyncio.sleep(random.uniform(0.05, 0.3))
        except Exception:  # a dropped socket reconnects, as a browser would
            stats["reconnects"] = stats.get("reconnects", 0) + 1
            await asyncio.sleep(0.5)


async def churner(ws_list: list[str], stop: float, stats: dict) -> None:
    """Watchers that connect, read for a while and leave."""
    while time.monotonic() < stop:
        with contextlib.suppress(Exception):
            async with Player(random.choice(ws_list), "soak") as p:
                end = time.monotonic() + random.uniform(1, 8)
                while time.monotonic() < end:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await p.next("pixels", timeout=1)
                stats["watch_sessions"] = stats.get("watch_sessions", 0) + 1


async def board_reader(urls: list[str], stop: float, stats: dict) -> None:
    while time.monotonic() < stop:
        await asyncio.to_thread(fetch, random.choice(urls) + "/api/canvases/soak/board")
        stats["board_fetches"] = stats.get("board_fetches", 0) + 1
        await asyncio.sleep(0.5)


def replay_from_history(database_url: str) -> bytes:
    import psycopg

    board = bytearray(WIDTH * HEIGHT)
    with psycopg.connect(database_url.replace("postgres://", "postgresql://")) as conn:
        rows = conn.execute(
            "SELECT p.x, p.y, p.color FROM canvas_placement p "
            "JOIN canvas_canvas c ON c.id = p.canvas_id WHERE c.slug = 'soak' "
            "ORDER BY p.seq"
        )
        for x, y, color in rows:
            board[y * WIDTH + x] = color
    return bytes(board)


def connection_rows(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url.replace("postgres://", "postgresql://")) as conn:
        return conn.execute("SELECT COUNT(*) FROM canvas_connection").fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--placers", type=int, default=40)
    parser.add_argument("--churners", type=int, default=30)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    os.environ.setdefault("PLACE_TEST_REDIS_DB", "9")
    stack = make_stack(
        tmp,
        database="postgres",
        redis=True,
        servers=2,
        env={
            "PLACE_HEARTBEAT_SECONDS": "5",
            "PLACE_CONNECTION_STALE_SECONDS": "15",
            "PLACE_MAX_CONNECTIONS_PER_IP": "0",
        },
    )
    try:
        stack.manage("createcanvas", "soak", "--width", str(WIDTH), "--height",
                     str(HEIGHT), "--cooldown", "0")  # fmt: skip
        urls = [s.url for s in stack.servers]
        ws = [s.ws for s in stack.servers]
        cookies = [anonymous_cookie(urls[i % 2]) for i in range(args.placers)]
        pids = [s.process.pid for s in stack.servers]
        stats: dict = {}
        samples: list[tuple[float, list[int]]] = []
        started = time.monotonic()
        stop = started + args.minutes * 60

        async def sample() -> None:
            while time.monotonic() < stop:
                samples.append((time.monotonic() - started, [rss_kb(p) for p in pids]))
                await asyncio.sleep(10)

        async def run() -> None:
            tasks = [placer(ws[i % 2], c, stop, stats) for i, c in enumerate(cookies)]
            tasks += [churner(ws, stop, stats) for _ in range(args.churners)]
            tasks += [board_reader(urls, stop, stats), sample()]
            await asyncio.gather(*tasks)

        asyncio.run(run())
        time.sleep(2)  # let the last frames and disconnects land
        samples.append((time.monotonic() - started, [rss_kb(p) for p in pids]))
        database_url = stack.env["DATABASE_URL"]
        leaked = connection_rows(database_url)
        board = fetch(urls[0] + "/api/canvases/soak/board")
        equal = (
            board
            == replay_from_history(database_url)
            == fetch(urls[1] + "/api/canvases/soak/board")
        )
        warm = next((s for s in samples if s[0] >= 60), samples[0])
        growth = [
            (end - begin) / begin * 100
            for begin, end in zip(warm[1], samples[-1][1], strict=True)
        ]
        alive = all(s.process.poll() is None for s in stack.servers)
    finally:
        stack.stop()
    cpu = platform.processor() or platform.machine()
    ok = leaked == 0 and equal and alive and max(growth) < 10
    report = [
        f"### soak, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- machine: {os.cpu_count()} cores, {cpu}, "
        f"load average at end {os.getloadavg()[0]:.1f}",
        f"- command: `.venv/bin/python bench/soak.py --minutes {args.minutes:g} "
        f"--placers {args.placers} --churners {args.churners}`",
        "- stack: 2 daphne processes, PostgreSQL, Redis",
        f"- traffic: {stats}",
        f"- RSS (KB) per server after warm-up at {warm[0]:.0f} s: {warm[1]}; "
        f"at end: {samples[-1][1]}; growth: "
        + ", ".join(f"{g:+.1f} %" for g in growth),
        f"- Connection rows left after all clients left: {leaked}",
        f"- board equals replay of history on both servers: {equal}",
        f"- servers alive at end: {alive}",
        f"- verdict: {'PASS' if ok else 'FAIL'}",
        "",
    ]
    print("\n".join(report))
    if not args.no_record:
        path = ROOT / "docs" / "reliability.md"
        text = path.read_text() if path.exists() else ""
        marker = "<!-- soak results -->"
        if marker in text:
            text = text.replace(marker, marker + "\n\n" + "\n".join(report), 1)
        else:
            text += "\n" + "\n".join(report)
        path.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
