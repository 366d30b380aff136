"""Regenerate docs/screenshot-desktop.png and docs/screenshot-phone.png.

    .venv/bin/python docs/make_screenshots.py

Starts daphne on a throwaway SQLite database (tests/live.py), paints a small
picture on `main`, and photographs the player page in Debian's Chromium at
1280x800 and as a 375x667 phone, each after placing one pixel so the
cooldown is running.
"""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live import make_stack  # noqa: E402

CHROMIUM = os.environ.get("PLACE_CHROMIUM", "/usr/bin/chromium")
DOCS = ROOT / "docs"

# Diagonal palette bands with a white field and a red heart in the middle.
PAINT = """
from canvas.models import Canvas, Chunk, CHUNK_SIZE
canvas = Canvas.objects.get(slug="main")
heart = [
    "..XXX...XXX..",
    ".XXXXX.XXXXX.",
    "XXXXXXXXXXXXX",
    "XXXXXXXXXXXXX",
    ".XXXXXXXXXXX.",
    "..XXXXXXXXX..",
    "...XXXXXXX...",
    "....XXXXX....",
    ".....XXX.....",
    "......X......",
]
def colour(x, y):
    hx, hy = (x - 470) // 5, (y - 470) // 5
    if 0 <= hy < len(heart) and 0 <= hx < len(heart[0]):
        return 5 if heart[hy][hx] == "X" else 0
    if 440 <= x < 570 and 450 <= y < 540:
        return 0
    return [12, 13, 15, 14, 4, 5, 6, 8, 9, 10, 11][((x + y) // 24) % 11]
for chunk in Chunk.objects.filter(canvas=canvas):
    x0, y0 = chunk.cx * CHUNK_SIZE, chunk.cy * CHUNK_SIZE
    chunk.data = bytes(
        colour(x0 + i % CHUNK_SIZE, y0 + i // CHUNK_SIZE)
        for i in range(CHUNK_SIZE * CHUNK_SIZE)
    )
    chunk.save(update_fields=["data"])
"""


def shoot(browser, url: str, path: Path, phone: bool) -> None:
    options = (
        {
            "viewport": {"width": 375, "height": 667},
            "has_touch": True,
            "is_mobile": True,
            "device_scale_factor": 2,
        }
        if phone
        else {"viewport": {"width": 1280, "height": 800}}
    )
    context = browser.new_context(**options)
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector('[data-role="status"].live')
        board = page.locator('[data-role="board"]').bounding_box()
        cx, cy = board["width"] / 2, board["height"] / 2
        if phone:
            page.locator('[data-color="13"]').tap()
            page.touchscreen.tap(cx + 24, cy - 60)
        else:
            page.locator('[data-color="12"]').click()
            page.mouse.click(cx + 40, cy - 80)
            page.mouse.move(cx + 64, cy - 56)
        page.wait_for_function(
            "() => /\\d:\\d\\d/.test("
            "document.querySelector('[data-role=cooldown]').textContent)"
        )
        page.wait_for_timeout(1200)
        page.screenshot(path=str(path))
        print("wrote", path.relative_to(ROOT))
    finally:
        context.close()


def main() -> None:
    from playwright.sync_api import sync_playwright

    stack = make_stack(Path(tempfile.mkdtemp(prefix="screenshots-")), servers=0)
    try:
        stack.manage("createcanvas", "main", "--cooldown", "300", "--title", "r/place")
        stack.manage("shell", "-c", PAINT)
        server = stack.start_server()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
            )
            shoot(
                browser,
                server.url + "/?x=505&y=495&z=8",
                DOCS / "screenshot-desktop.png",
                phone=False,
            )
            shoot(
                browser,
                server.url + "/?x=503&y=494&z=6",
                DOCS / "screenshot-phone.png",
                phone=True,
            )
            browser.close()
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
