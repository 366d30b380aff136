"""The player page in Chromium: first full paint, and panning under live load.

    .venv/bin/python bench/browser.py [--runs 5] [--seconds 5] [--players 24]

Starts daphne on a fresh SQLite database (tests/live.py), fills `main`
(1000x1000) and a 2000x2000 canvas with random pixels, then opens each page in
a new browser context several times and reads the page's own performance
measure `place:first-paint` (navigation start to the frame after the whole
board was drawn). Then it pans the 1000x1000 board with the mouse while
`--players` sockets place pixels as fast as the server accepts them, and
records the frame intervals the page saw. Figures go to the "## browser"
section of bench/RESULTS.md (only that section is rewritten).
"""

import argparse
import asyncio
import concurrent.futures
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live import make_stack  # noqa: E402
from tests.wsclient import Player, anonymous_cookie  # noqa: E402

CHROMIUM = os.environ.get("PLACE_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
RESULTS = ROOT / "bench" / "RESULTS.md"

FILL = """
import random
from canvas.models import Canvas, Chunk
for slug in {slugs!r}:
    canvas = Canvas.objects.get(slug=slug)
    for chunk in Chunk.objects.filter(canvas=canvas):
        chunk.data = bytes(random.randrange(16) for _ in range(len(chunk.data)))
        chunk.save(update_fields=["data"])
"""

FRAMES = """() => new Promise(resolve => {
  const times = [];
  const end = performance.now() + %d;
  function tick(t) {
    times.push(t);
    if (t < end) requestAnimationFrame(tick); else resolve(times);
  }
  requestAnimationFrame(tick);
})"""


def first_paint(browser, url: str) -> float:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(url)
        return page.wait_for_function(
            "() => performance.getEntriesByName('place:first-paint', 'measure')[0]"
            "?.duration",
            timeout=30000,
        ).json_value()
    finally:
        context.close()


async def place_flood(server, seconds: float, players: int) -> int:
    """Place from `players` sockets as fast as accepted; return accepted count."""
    deadline = time.monotonic() + seconds
    counts = []

    async def one(i: int) -> None:
        count = 0
        async with Player(server.ws, "main", anonymous_cookie(server.url)) as p:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                x, y = (i * 41 + n * 7) % 1000, (i * 97 + n * 13) % 1000
                reply = await p.place(x, y, n % 16)
                count += reply["type"] == "accepted"
        counts.append(count)

    await asyncio.gather(*(one(i) for i in range(players)))
    return sum(counts)


def pan_under_load(browser, server, seconds: float, players: int) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(server.url + "/?x=500&y=500&z=2")
        page.wait_for_selector('[data-role="status"].live')
        page.wait_for_timeout(500)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            flood = pool.submit(asyncio.run, place_flood(server, seconds, players))
            frames = page.evaluate_handle(FRAMES % int(seconds * 1000))
            page.mouse.move(640, 400)
            page.mouse.down()
            while time.monotonic() - started < seconds:
                for dx in range(0, 200, 10):
                    page.mouse.move(640 + dx, 400 + dx / 2)
                for dx in range(200, 0, -10):
                    page.mouse.move(640 + dx, 400 + dx / 2)
            page.mouse.up()
            accepted = flood.result()
            elapsed = time.monotonic() - started
            times = frames.json_value()
    finally:
        context.close()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    gaps.sort()
    return {
        "updates_per_s": accepted / elapsed,
        "frames": len(gaps),
        "median_ms": statistics.median(gaps),
        "p95_ms": gaps[int(len(gaps) * 0.95)],
        "max_ms": gaps[-1],
        "over_50ms": sum(g > 50 for g in gaps),
    }


def write_section(text: str) -> None:
    content = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    head = "## browser"
    if head not in content:
        content = content.rstrip("\n") + f"\n\n{head}\n"
    before, after = content.split(head, 1)
    rest = after.split("\n## ", 1)
    tail = "\n## " + rest[1] if len(rest) > 1 else ""
    body = rest[0].rstrip("\n") + "\n\n" + text.strip("\n") + "\n"
    RESULTS.write_text(before + head + body + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--players", type=int, default=24)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    stack = make_stack(tmp, servers=0, env={"PLACE_MESSAGE_RATE": "0"})
    try:
        stack.manage("createcanvas", "main", "--cooldown", "0")
        stack.manage("createcanvas", "big", "--width", "2000", "--height", "2000")
        stack.manage("shell", "-c", FILL.format(slugs=["main", "big"]))
        server = stack.start_server()
        paints = {}
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=LAUNCH_ARGS
            )
            for label, path in [("1000x1000", "/"), ("2000x2000", "/c/big/")]:
                paints[label] = [
                    first_paint(browser, server.url + path) for _ in range(args.runs)
                ]
                print(label, [round(t) for t in paints[label]])
            load = pan_under_load(browser, server, args.seconds, args.players)
            print(load)
            browser.close()
    finally:
        stack.stop()
    load1, _ = os.getloadavg()[:2]
    lines = [
        f"### {datetime.datetime.now().isoformat(timespec='minutes')}",
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"load {load1:.2f}; Chromium {CHROMIUM} headless, --disable-gpu; "
        f"command: `.venv/bin/python bench/browser.py --runs {args.runs} "
        f"--seconds {args.seconds:g} --players {args.players}`",
        "",
        "| first full paint (navigation start to the frame after the board) "
        "| median | max | runs |",
        "| --- | --- | --- | --- |",
    ]
    for label, times in paints.items():
        lines.append(
            f"| {label}, random pixels | {statistics.median(times):.0f} ms "
            f"| {max(times):.0f} ms | {len(times)} |"
        )
    lines += [
        "",
        f"Panning 1000x1000 at zoom 2 with the mouse for {args.seconds:g} s while "
        f"{args.players} sockets placed {load['updates_per_s']:.0f} pixels/s "
        f"(all the one daphne process on SQLite accepted): {load['frames']} frames, "
        f"interval median {load['median_ms']:.1f} ms, p95 {load['p95_ms']:.1f} ms, "
        f"max {load['max_ms']:.1f} ms, {load['over_50ms']} over 50 ms.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
