"""The player page in a real Chromium, driven by Playwright, against live daphne.

Colours are read from screenshots at screen positions computed from the
contract (the view's centre is the centre of the `data-role="board"` box, the
address says which pixel is there and at what zoom), never from page state.
"""

import asyncio
import concurrent.futures
import io
import json
import math
import os
import re
import shutil
import time
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from . import services_available as svc
from .live import make_stack
from .wsclient import Player, anonymous_cookie

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("PLACE_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PALETTE_WHITE = (255, 255, 255)
DESKTOP = {"width": 1280, "height": 800}
PHONE = {
    "viewport": {"width": 375, "height": 667},
    "has_touch": True,
    "is_mobile": True,
    "device_scale_factor": 2,
}


def run_async(coroutine):
    """Run a wsclient coroutine beside Playwright's own event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=60)


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


# ---- fixtures: one browser and one live stack for the module ----


@pytest.fixture(scope="module")
def browser():
    message = None
    if not shutil.which(CHROMIUM):
        message = f"Chromium not found at {CHROMIUM}; install Debian's chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "Playwright for Python is not installed (requirements-dev.txt)"
    if message and svc.in_ci():
        pytest.fail(f"{message}; CI must provide it", pytrace=False)
    if message:
        pytest.skip(message)

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=LAUNCH_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, browser):
    """Skips (via `browser`) before starting servers when there is no Chromium."""
    stack = make_stack(tmp_path_factory.mktemp("browser"))
    try:
        for slug, size, cooldown in [
            ("t", 64, 3),
            ("zoom", 64, 3),
            ("drag", 64, 3),
            ("phone", 64, 3),
            ("keys", 64, 3),
        ]:
            stack.manage(
                "createcanvas",
                slug,
                "--width",
                str(size),
                "--height",
                str(size),
                "--cooldown",
                str(cooldown),
            )
        yield stack
    finally:
        stack.stop()


class Errors(list):
    """Console errors and uncaught exceptions of every page opened in a test."""

    def watch(self, page) -> None:
        page.on(
            "console",
            lambda m: self.append(f"console: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: self.append(f"pageerror: {e}"))


@pytest.fixture
def errors():
    seen = Errors()
    yield seen
    assert list(seen) == [], "the page logged errors"


@pytest.fixture
def open_page(browser, errors):
    contexts = []

    def open_(url: str, **context_options):
        context = browser.new_context(**({"viewport": DESKTOP} | context_options))
        contexts.append(context)
        page = context.new_page()
        errors.watch(page)
        page.goto(url)
        wait_live(page)
        return page

    yield open_
    for context in contexts:
        context.close()


# ---- reading the screen ----


def wait_live(page, timeout: float = 10) -> None:
    page.wait_for_selector('[data-role="status"].live', timeout=timeout * 1000)


def view_of(page) -> tuple[float, float, float]:
    """The (x, y, z) the address currently names."""
    query = parse_qs(urlsplit(page.url).query)
    return float(query["x"][0]), float(query["y"][0]), float(query["z"][0])


def wait_view(page, predicate=lambda v: True, timeout: float = 5):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = view_of(page)
            if predicate(v):
                return v
        except KeyError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"address never matched: {page.url}")
        page.wait_for_timeout(50)


def screen_points(page, pixels: list[tuple[int, int]]) -> list[tuple[float, float]]:
    """Where the centres of canvas pixels are on screen, from the address."""
    cx, cy, z = view_of(page)
    box = page.locator('[data-role="board"]').bounding_box()
    mx, my = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    return [(mx + (x - int(cx)) * z, my + (y - int(cy)) * z) for x, y in pixels]


def screen_point(page, x: int, y: int) -> tuple[float, float]:
    return screen_points(page, [(x, y)])[0]


def screenshot(page) -> Image.Image:
    png = page.screenshot(scale="css", animations="disabled")
    return Image.open(io.BytesIO(png)).convert("RGB")


def colours_at(page, pixels: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    image = screenshot(page)
    points = screen_points(page, pixels)
    return [image.getpixel((int(px), int(py))) for px, py in points]


def wait_colours(page, expected: dict, timeout: float = 10) -> None:
    """Wait until each canvas pixel in `expected` shows its RGB on screen."""
    deadline = time.monotonic() + timeout
    pixels = list(expected)
    while True:
        seen = colours_at(page, pixels)
        wrong = {p: s for p, s in zip(pixels, seen, strict=True) if s != expected[p]}
        if not wrong:
            return
        if time.monotonic() > deadline:
            shown = dict(list(wrong.items())[:10])
            raise AssertionError(
                f"{len(wrong)} pixels differ; (pixel): shown, expected: "
                + ", ".join(f"{p}: {s}, {expected[p]}" for p, s in shown.items())
            )
        page.wait_for_timeout(100)


def palette(server_url: str, slug: str) -> list[tuple[int, int, int]]:
    with urllib.request.urlopen(f"{server_url}/api/canvases/{slug}/") as r:
        return [hex_rgb(c) for c in json.loads(r.read())["palette"]]


def board_bytes(server_url: str, slug: str) -> bytes:
    with urllib.request.urlopen(f"{server_url}/api/canvases/{slug}/board") as r:
        return r.read()


def click_pixel(page, x: int, y: int) -> None:
    px, py = screen_point(page, x, y)
    page.mouse.click(px, py)


# ---- the tests ----


def test_a_click_places_and_another_player_sees_it_drawn(stack, open_page):
    url = stack.servers[0].url
    colours = palette(url, "t")
    alice = open_page(f"{url}/c/t/?x=32&y=32&z=8")
    bob = open_page(f"{url}/c/t/?x=20&y=30&z=5")
    wait_colours(bob, {(10, 12): PALETTE_WHITE})

    alice.locator('[data-color="5"]').click()
    assert alice.locator('[data-color="5"]').get_attribute("aria-checked") == "true"
    click_pixel(alice, 10, 12)

    wait_colours(bob, {(10, 12): colours[5], (11, 12): PALETTE_WHITE})
    wait_colours(alice, {(10, 12): colours[5]})
    assert board_bytes(url, "t")[12 * 64 + 10] == 5


def test_a_resize_keeping_the_area_redraws_the_board_in_its_new_shape(stack, open_page):
    """40x20 becomes 20x40 (same byte count) while the page is open."""
    url = stack.servers[0].url
    stack.manage(
        "createcanvas", "shape", "--width", "40", "--height", "20", "--cooldown", "0"
    )
    place_offline(stack, "shape", [(2, 1, 5), (30, 3, 9)])
    colours = palette(url, "shape")
    page = open_page(f"{url}/c/shape/?x=10&y=10&z=8")
    wait_colours(page, {(2, 1): colours[5], (30, 3): colours[9]})
    stack.manage("createcanvas", "shape", "--width", "20", "--height", "40")
    # A pixel that exists only in the new shape; it reaches the page as a live
    # update, drawn only if the page took the new shape.
    place_offline(stack, "shape", [(5, 30, 9)])
    wait_colours(page, {(2, 1): colours[5], (5, 30): colours[9]})
    assert board_bytes(url, "shape")[1 * 20 + 2] == 5


def test_cooldown_counts_down_on_the_page_and_in_the_title(stack, open_page):
    page = open_page(f"{stack.servers[0].url}/c/t/?x=32&y=32&z=8")
    cooldown = page.locator('[data-role="cooldown"]')
    assert "ready" in cooldown.inner_text().lower()
    page.locator('[data-color="3"]').click()
    click_pixel(page, 40, 40)
    page.wait_for_function(
        "el => /0:0[23]/.test(el.textContent)", arg=cooldown.element_handle()
    )
    first = cooldown.inner_text()
    assert re.search(r"0:0[23]", page.title())
    page.wait_for_function(
        "([el, t]) => el.textContent !== t && /0:0[12]/.test(el.textContent)",
        arg=[cooldown.element_handle(), first],
    )
    page.wait_for_function(
        "el => /ready/i.test(el.textContent)", arg=cooldown.element_handle()
    )
    assert not re.search(r"\d:\d\d", page.title())


def test_a_double_click_places_once_without_a_refusal(stack, open_page):
    page = open_page(f"{stack.servers[0].url}/c/t/?x=32&y=32&z=8")
    sent = []
    page.on(
        "websocket",
        lambda ws: ws.on("framesent", lambda payload: sent.append(payload)),
    )
    page.reload()  # so the socket opens with the listener in place
    wait_live(page)
    page.locator('[data-color="4"]').click()
    px, py = screen_point(page, 44, 41)
    page.mouse.dblclick(px, py)
    cooldown = page.locator('[data-role="cooldown"]')
    page.wait_for_function(
        "el => /0:0[23]/.test(el.textContent)", arg=cooldown.element_handle()
    )
    page.wait_for_timeout(300)
    assert [p for p in sent if '"place"' in str(p)] == [
        '{"type":"place","x":44,"y":41,"color":4}'
    ]
    toast = page.locator(".toast")
    assert not toast.is_visible() or "Not yet" not in toast.inner_text()
    assert board_bytes(stack.servers[0].url, "t")[41 * 64 + 44] == 4


def test_zoom_and_pan_change_the_view_and_the_address_restores_it(
    stack, open_page, browser
):
    url = stack.servers[0].url
    colours = palette(url, "zoom")

    async def paint():
        async with Player(stack.servers[0].ws, "zoom", anonymous_cookie(url)) as p:
            assert (await p.place(30, 30, 5))["type"] == "accepted"

    run_async(paint())
    page = open_page(f"{url}/c/zoom/")
    x0, y0, z0 = wait_view(page)
    box = page.locator('[data-role="board"]').bounding_box()
    assert z0 * 64 <= min(box["width"], box["height"])  # the whole board fits

    # Wheel zoom towards the pointer: the pixel under it stays under it.
    px, py = screen_point(page, 30, 30)
    page.mouse.move(px, py)
    for _ in range(12):
        page.mouse.wheel(0, -300)
        page.wait_for_timeout(20)
    x1, y1, z1 = wait_view(page, lambda v: v[2] >= 40)
    page.mouse.move(5, 400)  # the reticle follows the mouse: out of the way
    wait_colours(page, {(30, 30): colours[5], (31, 30): PALETTE_WHITE})
    image = screenshot(page)
    sx, sy = screen_point(page, 30, 30)
    # Crisp: the whole block is the colour, right up to its edges.
    half = z1 / 2 - 2
    for dx, dy in [(-half, -half), (half, half), (-half, half), (half, -half)]:
        assert image.getpixel((int(sx + dx), int(sy + dy))) == colours[5]
    assert image.getpixel((int(sx + z1 / 2 + 2), int(sy))) == PALETTE_WHITE
    assert abs(sx - px) <= z1 and abs(sy - py) <= z1

    # Drag pans: the address follows.
    page.mouse.move(640, 400)
    page.mouse.down()
    page.mouse.move(540, 350, steps=8)
    page.mouse.up()
    x2, y2, z2 = wait_view(page, lambda v: (v[0], v[1]) != (x1, y1))
    page.mouse.move(5, 400)
    assert x2 > x1 and y2 > y1 and z2 == z1

    # Reopening the address shows the same view.
    shared = page.url
    again = open_page(shared)
    assert view_of(again) == (x2, y2, z2)
    wait_colours(again, {(30, 30): colours[5]})
    box = page.locator('[data-role="board"]').bounding_box()
    clip = {"x": box["width"] / 2 - 100, "y": box["height"] / 2 - 100}
    clip |= {"width": 200, "height": 200}
    assert page.screenshot(clip=clip) == again.screenshot(clip=clip)

    # Reset view shows the whole board again.
    page.locator('[data-role="reset"]').click()
    wait_view(page, lambda v: v[2] * 64 <= box["height"])


def test_keyboard_pans_and_zooms(stack, open_page):
    page = open_page(f"{stack.servers[0].url}/c/zoom/?x=32&y=32&z=8")
    # Screen readers find the board by its role and name, and pass it the keys.
    board = page.get_by_role("application", name="The canvas")
    assert board.get_attribute("data-role") == "board"
    board.focus()
    page.keyboard.press("+")
    wait_view(page, lambda v: v[2] > 8)
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    wait_view(page, lambda v: v[0] > 32 and v[1] > 32)
    page.keyboard.press("-")
    page.keyboard.press("-")
    wait_view(page, lambda v: v[2] < 8)


def test_a_drag_pans_and_never_places(stack, open_page):
    url = stack.servers[0].url
    page = open_page(f"{url}/c/drag/?x=32&y=32&z=8")
    page.locator('[data-color="7"]').click()
    before = view_of(page)
    sx, sy = screen_point(page, 32, 32)
    page.mouse.move(sx, sy)
    page.mouse.down()
    page.mouse.move(sx + 30, sy + 10, steps=5)
    page.mouse.move(sx + 60, sy + 20, steps=5)
    page.mouse.up()
    wait_view(page, lambda v: v != before)
    page.wait_for_timeout(500)
    assert set(board_bytes(url, "drag")) == {0}
    assert "ready" in page.locator('[data-role="cooldown"]').inner_text().lower()


def coords_shown(page) -> tuple[int, int]:
    """The pixel the toolbar's readout names (under the mouse, or the centre)."""
    text = page.locator('[data-role="coords"]').inner_text()
    x, y = re.match(r"\((\d+), (\d+)\)", text).groups()
    return int(x), int(y)


def test_a_click_places_the_pixel_the_reticle_names_after_a_wheel_zoom(
    stack, open_page
):
    """After a zoom the view settles on a pixel's centre, sliding the board
    under a still mouse; the reticle and readout follow, so a click places
    exactly the pixel they named. A slip before release keeps the pressed one."""
    url = stack.servers[0].url
    stack.manage(
        "createcanvas", "aim", "--width", "200", "--height", "150", "--cooldown", "0"
    )
    page = open_page(f"{url}/c/aim/?x=100&y=75&z=6")
    page.locator('[data-color="5"]').click()
    placed = []
    # Each settle slides up to half a pixel: over several tries, some slide
    # a neighbour under the mouse (6 of 10 tries in the probe that found it).
    tries = [((747, 535), 3), ((511, 358), 2), ((705, 219), 4), ((433, 611), 1)]
    tries += [((861, 277), 2), ((379, 199), 3), ((1003, 455), 1), ((655, 643), 2)]
    for (mx, my), notches in tries:
        page.mouse.move(mx, my)
        for _ in range(notches):
            page.mouse.wheel(0, -120)
            page.wait_for_timeout(30)
        page.wait_for_timeout(800)  # the settle is over
        target = coords_shown(page)
        # The pixel under the mouse, by the contract (the address's pixel is
        # at the board's centre), is the one the readout names.
        cx, cy, z = view_of(page)
        box = page.locator('[data-role="board"]').bounding_box()
        mid_x, mid_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        under = (
            math.floor(cx + 0.5 + (mx - mid_x) / z),
            math.floor(cy + 0.5 + (my - mid_y) / z),
        )
        assert target == under
        page.mouse.click(mx, my)
        placed.append(target)
    page.mouse.move(600, 500)
    page.mouse.down()
    pressed = coords_shown(page)
    page.mouse.move(604, 500)  # under the drag threshold: still a click
    page.mouse.up()
    placed.append(pressed)
    deadline = time.monotonic() + 5
    while True:
        board = board_bytes(url, "aim")
        painted = {(i % 200, i // 200) for i, c in enumerate(board) if c == 5}
        if painted == set(placed) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert painted == set(placed)


def test_the_view_always_names_a_pixel_of_the_canvas(stack, open_page):
    url = stack.servers[0].url
    page = open_page(f"{url}/c/zoom/?x=5000&y=-20&z=8")
    assert wait_view(page) == (63, 0, 8)
    page.locator('[data-role="board"]').focus()
    page.keyboard.press("Shift+ArrowRight")  # further past the edge: stays on it
    page.keyboard.press("i")
    inspector = page.locator('[data-role="inspector"]')
    inspector.wait_for(state="visible")
    assert "(63, 0)" in inspector.inner_text()
    # A zoom alone: the middle of the canvas at that zoom.
    alone = open_page(f"{url}/c/zoom/?z=16")
    assert wait_view(alone) == (32, 32, 16)


def test_a_second_tab_of_the_same_player_counts_the_cooldown_down_too(stack, open_page):
    url = stack.servers[0].url
    first = open_page(f"{url}/c/keys/?x=40&y=40&z=8")
    second = first.context.new_page()
    second.goto(f"{url}/c/keys/?x=40&y=40&z=8")
    wait_live(second)
    cooldown = second.locator('[data-role="cooldown"]')
    assert "ready" in cooldown.inner_text().lower()
    first.locator('[data-color="9"]').click()
    click_pixel(first, 41, 41)
    second.wait_for_function(
        "el => /^0:0[1-3]$/.test(el.textContent)", arg=cooldown.element_handle()
    )
    second.close()


def test_a_phone_places_by_tap_with_palette_and_cooldown_in_reach(stack, open_page):
    url = stack.servers[0].url
    colours = palette(url, "phone")
    page = open_page(f"{url}/c/phone/?x=32&y=32&z=6", **PHONE)
    for role in ['[data-color="0"]', '[data-color="15"]', '[data-role="cooldown"]']:
        box = page.locator(role).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 375, role
        assert box["y"] >= 0 and box["y"] + box["height"] <= 667, role
        if role.startswith("[data-color"):
            assert box["width"] >= 32 and box["height"] >= 32, "big enough to tap"
    page.locator('[data-color="13"]').tap()
    px, py = screen_point(page, 33, 30)
    page.touchscreen.tap(px, py)
    wait_colours(page, {(33, 30): colours[13], (32, 30): PALETTE_WHITE})
    assert board_bytes(url, "phone")[30 * 64 + 33] == 13
    page.wait_for_function(
        "el => /0:0\\d/.test(el.textContent)",
        arg=page.locator('[data-role="cooldown"]').element_handle(),
    )


def test_choosing_a_pixel_without_a_colour_inspects_it(stack, open_page):
    url = stack.servers[0].url

    async def paint():
        async with Player(stack.servers[0].ws, "t", anonymous_cookie(url)) as p:
            assert (await p.place(50, 50, 8))["type"] == "accepted"
            return p.hello["user"]

    painter = run_async(paint())
    page = open_page(f"{url}/c/t/?x=50&y=50&z=10")
    click_pixel(page, 50, 50)
    inspector = page.locator('[data-role="inspector"]')
    inspector.wait_for(state="visible")
    assert "(50, 50) yellow" in inspector.inner_text()
    assert f"placed by {painter}" in inspector.inner_text()
    assert "ago" in inspector.inner_text()
    inspector.get_by_role("button", name="Close the inspector").click()
    inspector.wait_for(state="hidden")
    click_pixel(page, 51, 50)
    inspector.wait_for(state="visible")
    assert "never placed" in inspector.inner_text()


def test_palette_and_placing_work_from_the_keyboard(stack, open_page):
    url = stack.servers[0].url
    colours = palette(url, "keys")
    page = open_page(f"{url}/c/keys/?x=20&y=20&z=8")
    buttons = page.locator("button[data-color]")
    assert buttons.count() == 16
    assert buttons.nth(3).get_attribute("aria-label") == "black"
    buttons.nth(0).focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    assert buttons.nth(2).get_attribute("aria-checked") == "true"
    page.locator('[data-role="board"]').focus()
    page.keyboard.press("ArrowLeft")  # one step: 40 screen px = 5 pixels
    page.keyboard.press("Enter")
    wait_view(page, lambda v: v[0] == 15)
    page.keyboard.press("Escape")  # drops the colour, and its preview on the pixel
    wait_colours(page, {(15, 20): colours[2]})
    assert board_bytes(url, "keys")[20 * 64 + 15] == 2


ALERT_SPY = """
window.__alerts = { beeps: 0, notes: [] };
window.__hidden = false;
Object.defineProperty(Document.prototype, 'hidden', { get: () => window.__hidden });
const createOscillator = AudioContext.prototype.createOscillator;
AudioContext.prototype.createOscillator = function () {
  window.__alerts.beeps += 1;
  return createOscillator.call(this);
};
window.Notification = class extends EventTarget {
  static permission = 'granted';
  static requestPermission() { return Promise.resolve('granted'); }
  constructor(title, options) { super(); window.__alerts.notes.push(options.body); }
};
"""


def test_opted_in_players_hear_and_see_when_the_cooldown_ends(stack, browser, errors):
    context = browser.new_context(viewport=DESKTOP)
    context.add_init_script(ALERT_SPY)
    try:
        page = context.new_page()
        errors.watch(page)
        page.goto(f"{stack.servers[0].url}/c/keys/?x=40&y=40&z=8")
        wait_live(page)
        alert = page.locator('[data-role="notify"]')
        alert.click()
        assert alert.get_attribute("aria-pressed") == "true"
        page.locator('[data-color="9"]').click()
        click_pixel(page, 44, 44)
        cooldown = page.locator('[data-role="cooldown"]').element_handle()
        page.wait_for_function("el => /0:0\\d/.test(el.textContent)", arg=cooldown)
        page.evaluate("() => { window.__hidden = true; }")  # the player looks away
        page.wait_for_function("el => /ready/i.test(el.textContent)", arg=cooldown)
        page.wait_for_function("() => window.__alerts.beeps === 1")
        assert page.evaluate("() => window.__alerts.notes") == [
            "You can place a pixel again."
        ]
    finally:
        context.close()


def test_a_phone_pans_with_one_finger_and_pinches_to_zoom(stack, open_page):
    url = stack.servers[0].url
    page = open_page(f"{url}/c/phone/?x=32&y=32&z=4", **PHONE)
    touch = touch_on(page)
    box = page.locator('[data-role="board"]').bounding_box()
    cx, cy = box["width"] / 2, box["height"] / 2
    touch("touchStart", [(cx, cy)])
    for step in range(1, 9):
        touch("touchMove", [(cx - step * 10, cy - step * 5)])
    touch("touchEnd", [])
    x, y, z = wait_view(page, lambda v: v[0] > 32)
    assert y > 32 and z == 4

    touch("touchStart", [(cx - 30, cy), (cx + 30, cy)])
    for step in range(1, 11):
        touch("touchMove", [(cx - 30 - step * 10, cy), (cx + 30 + step * 10, cy)])
    touch("touchEnd", [])
    wait_view(page, lambda v: v[2] > 8)
    page.wait_for_timeout(300)
    assert set(board_bytes(url, "phone")) <= {0, 13}  # only the earlier tap


def test_visitors_watch_until_they_sign_up_from_the_page(tmp_path, open_page):
    stack = make_stack(tmp_path, env={"PLACE_REQUIRE_LOGIN": "true"})
    page = None
    try:
        stack.manage("createcanvas", "s", "--width", "32", "--height", "32")
        url = stack.servers[0].url
        colours = palette(url, "s")
        page = open_page(f"{url}/c/s/?x=16&y=16&z=8")
        assert "log in" in page.locator('[data-role="cooldown"]').inner_text().lower()
        assert "watching live" in page.locator(".join").inner_text()
        page.locator('[data-color="5"]').click()
        click_pixel(page, 16, 16)
        message = page.locator('[data-role="message"]')
        message.wait_for(state="visible")
        assert "log in or sign up" in message.inner_text().lower()

        page.locator('[data-role="board"]').focus()
        page.keyboard.press("ArrowRight")
        wait_view(page, lambda v: v[0] == 21)
        page.locator(".account").get_by_role("link", name="Sign up").click()
        page.fill("input[name=username]", "painter")
        page.fill("input[name=password1]", "a-long-pass-phrase-42")
        page.fill("input[name=password2]", "a-long-pass-phrase-42")
        page.get_by_role("button", name="Sign up").click()
        page.wait_for_url("**/c/s/?x=21&y=16&z=8")
        wait_live(page)
        assert page.locator(".account .who").inner_text() == "painter"
        page.locator('[data-color="5"]').click()
        click_pixel(page, 21, 16)
        wait_colours(page, {(21, 16): colours[5]})
    finally:
        if page:
            page.close()  # before its server goes, or it logs the reconnects
        stack.stop()


# Chromium itself logs a failed socket or fetch while the server is down; those
# lines are the outage being noticed, not page errors.
OUTAGE_NOISE = re.compile(
    r"WebSocket connection to .* failed|Failed to load resource: net::ERR_CONNECTION"
)


# Everything the page announces to screen readers, as it is said.
ANNOUNCE_SPY = """() => {
  const region = document.querySelector('[data-role="announce"]');
  window.__said = [];
  new MutationObserver(() => {
    if (region.textContent) window.__said.push(region.textContent);
  }).observe(region, { childList: true, characterData: true, subtree: true });
}"""


def place_offline(stack, slug: str, pixels: list[tuple[int, int, int]]) -> None:
    """Place pixels straight through the service while no server runs."""
    code = (
        "from canvas import selectors, services\n"
        f"c = selectors.canvas_get(slug={slug!r})\n"
        "p = services.player_for_session(session_key='offline-painter')\n"
        f"for x, y, color in {pixels!r}:\n"
        "    services.placement_create(canvas_id=c.pk, player_id=p.pk,"
        " x=x, y=y, color=color)\n"
    )
    stack.manage("shell", "-c", code)


def place_live(server, slug: str, pixels: list[tuple[int, int, int]]) -> None:
    async def paint():
        async with Player(server.ws, slug, anonymous_cookie(server.url)) as p:
            for x, y, color in pixels:
                reply = await p.place(x, y, color)
                assert reply["type"] == "accepted", reply

    run_async(paint())


def set_open(stack, slug: str, is_open: bool) -> None:
    stack.manage(
        "shell",
        "-c",
        "from canvas import moderation, selectors;"
        f"c = selectors.canvas_get(slug={slug!r});"
        f"moderation.canvas_set_open(canvas_id=c.pk, is_open={is_open}, reason='test')",
    )


def set_ban(stack, name: str, hours: int) -> None:
    """Ban `name` for `hours` from now (negative: a ban that has ended)."""
    stack.manage(
        "shell",
        "-c",
        "from datetime import timedelta; from django.utils import timezone;"
        "from canvas.models import Player;"
        f"Player.objects.filter(name={name!r}).update(banned_until=timezone.now()"
        f" + timedelta(hours={hours}), ban_reason='spam')",
    )


def test_a_paused_canvas_shows_paused_and_refuses_clicks_until_resumed(
    stack, open_page
):
    url = stack.servers[0].url
    stack.manage("createcanvas", "pause", "--width", "32", "--height", "32")
    page = open_page(f"{url}/c/pause/?x=16&y=16&z=8")
    cooldown = page.locator('[data-role="cooldown"]')
    assert "ready" in cooldown.inner_text().lower()
    set_open(stack, "pause", False)
    page.wait_for_function(
        "el => /paused/i.test(el.textContent)", arg=cooldown.element_handle()
    )
    # A page opened while paused says so at once (the message after hello).
    late = open_page(f"{url}/c/pause/?x=16&y=16&z=8")
    late_cooldown = late.locator('[data-role="cooldown"]')
    late.wait_for_function(
        "el => /paused/i.test(el.textContent)", arg=late_cooldown.element_handle()
    )
    late.locator('[data-color="5"]').click()
    click_pixel(late, 3, 3)
    set_open(stack, "pause", True)
    late.wait_for_function(
        "el => /ready/i.test(el.textContent)", arg=late_cooldown.element_handle()
    )
    assert board_bytes(url, "pause")[3 * 32 + 3] == 0  # the paused click placed nothing
    click_pixel(late, 4, 3)
    late.wait_for_function(
        "el => !/ready/i.test(el.textContent)", arg=late_cooldown.element_handle()
    )
    assert board_bytes(url, "pause")[3 * 32 + 4] == 5


def test_a_banned_player_sees_it_at_once_and_can_place_again_once_unbanned(
    stack, open_page
):
    url = stack.servers[0].url
    stack.manage("createcanvas", "ban", "--width", "32", "--height", "32")
    page = open_page(f"{url}/c/ban/?x=16&y=16&z=8")
    name = page.locator(".who").inner_text()
    set_ban(stack, name, 2)
    page.reload()
    wait_live(page)
    cooldown = page.locator('[data-role="cooldown"]')
    page.wait_for_function(
        "el => /banned/i.test(el.textContent)", arg=cooldown.element_handle()
    )
    assert "(spam)" in page.locator('[data-role="message"]').inner_text()
    set_ban(stack, name, -1)  # the ban ended while the page stayed open
    page.locator('[data-color="5"]').click()
    click_pixel(page, 3, 3)
    page.wait_for_function(
        "el => /^\\d+:\\d\\d$/.test(el.textContent)", arg=cooldown.element_handle()
    )
    assert board_bytes(url, "ban")[3 * 32 + 3] == 5


def test_after_a_server_restart_the_page_reconnects_and_matches_the_board(
    tmp_path, open_page, errors
):
    stack = make_stack(tmp_path, env={"PLACE_MESSAGE_RATE": "0"})
    page = None
    try:
        stack.manage(
            "createcanvas", "r", "--width", "64", "--height", "64", "--cooldown", "0"
        )
        server = stack.servers[0]
        colours = palette(server.url, "r")
        page = open_page(f"{server.url}/c/r/?x=32&y=32&z=6")
        page.evaluate(ANNOUNCE_SPY)
        place_live(server, "r", [(1, 1, 5), (2, 1, 6)])
        wait_colours(page, {(1, 1): colours[5], (2, 1): colours[6]})

        stack.kill(server)
        page.wait_for_selector('[data-role="status"][data-state="offline"]')
        # Nothing stale while offline: no count, no "Ready", a retry countdown.
        cooldown = page.locator('[data-role="cooldown"]')
        page.wait_for_function(
            "el => el.textContent === 'Offline'", arg=cooldown.element_handle()
        )
        assert page.locator('[data-role="online"]').inner_text() == ""
        status = page.locator('[data-role="status"]')
        assert re.fullmatch(r"offline, retrying in \d+ s", status.inner_text())
        # Announced once (the countdown is not a live region); a button to retry.
        assert status.get_attribute("aria-live") is None
        assert status.get_attribute("role") == "button"
        assert status.get_attribute("tabindex") == "0"
        page.wait_for_function(
            "() => window.__said.some(t => /connection lost/i.test(t))"
        )
        place_offline(stack, "r", [(x, 10, 3 + x % 10) for x in range(64)])
        server = stack.start_server(port=server.port)
        # Right after the restart, probably before the page is back.
        place_live(server, "r", [(x, 20, 12) for x in range(0, 64, 2)])
        wait_live(page, timeout=30)
        page.wait_for_function("() => window.__said.includes('Live again.')")
        assert page.locator('[data-role="status"]').get_attribute("role") == "status"
        place_live(server, "r", [(5, y, 13) for y in range(64)])

        board = board_bytes(server.url, "r")
        expected = {(i % 64, i // 64): colours[c] for i, c in enumerate(board)}
        assert expected[(0, 10)] == colours[3] and expected[(5, 63)] == colours[13]
        wait_colours(page, expected, timeout=15)
    finally:
        if page:
            page.close()  # before the server goes, so it logs no further outage
        stack.stop()
        for line in [e for e in errors if OUTAGE_NOISE.search(e)]:
            errors.remove(line)


def test_first_full_paint_is_measured(stack, open_page):
    """Records how long the 1000x1000 board takes to appear (never asserted)."""
    page = open_page(f"{stack.servers[0].url}/")
    duration = page.wait_for_function(
        "() => performance.getEntriesByName('place:first-paint', 'measure')[0]"
        "?.duration"
    ).json_value()
    assert duration > 0
    print(f"first full paint of 1000x1000: {duration:.0f} ms")


def test_production_mode_serves_hashed_static_files(tmp_path, browser, errors):
    """DJANGO_DEBUG=false under daphne: collected, hashed, cached for a year."""
    static_root = tmp_path / "static"
    env = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "browser-test-secret-key-not-for-production-use-0123",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "DJANGO_STATIC_ROOT": str(static_root),
    }
    stack = make_stack(tmp_path, servers=0, env=env)
    try:
        stack.manage("collectstatic", "--noinput")
        server = stack.start_server()
        with urllib.request.urlopen(server.url + "/") as r:
            html = r.read().decode()
        names = re.findall(r"/static/canvas/place\.([0-9a-f]{12})\.(js|css)", html)
        assert {ext for _, ext in names} == {"js", "css"}, html[:400]
        script = next(f"/static/canvas/place.{h}.js" for h, ext in names if ext == "js")
        with urllib.request.urlopen(server.url + script) as r:
            assert b"'use strict'" in r.read()
            assert "max-age=315360000" in r.headers["Cache-Control"]
        context = browser.new_context(viewport=DESKTOP)
        try:
            page = context.new_page()
            errors.watch(page)
            page.goto(server.url + "/c/main/")
            wait_live(page)
            assert page.locator('[data-color="15"]').is_visible()
        finally:
            context.close()
    finally:
        stack.stop()


# ---- what a player found by playing ----


def test_a_tiny_canvas_opens_and_resets_within_the_zoom_limit(stack, open_page):
    """On a 3x3 canvas the whole-board fit would exceed 64x: it is clamped, so
    zooming in never shrinks the board and the address reproduces the view."""
    url = stack.servers[0].url
    stack.manage("createcanvas", "tiny", "--width", "3", "--height", "3")
    small = {"viewport": {"width": 1280, "height": 720}}
    page = open_page(f"{url}/c/tiny/", **small)
    assert wait_view(page) == (1, 1, 64)
    page.locator('[data-role="zoom-in"]').click()
    page.wait_for_timeout(300)
    assert wait_view(page) == (1, 1, 64)
    page.locator('[data-role="zoom-out"]').click()
    wait_view(page, lambda v: v[2] == 32)
    page.locator('[data-role="reset"]').click()
    wait_view(page, lambda v: v[2] == 64)
    again = open_page(f"{url}/c/tiny/?x=1&y=1&z=151.35", **small)
    assert wait_view(again) == (1, 1, 64)
    page.mouse.move(5, 400)
    again.mouse.move(5, 400)
    clip = {"x": 640 - 150, "y": 360 - 150, "width": 300, "height": 300}
    assert page.screenshot(clip=clip) == again.screenshot(clip=clip)


def touch_on(page):
    """Send raw touch points through the DevTools protocol."""
    cdp = page.context.new_cdp_session(page)

    def touch(kind: str, points: list[tuple[float, float]]) -> None:
        cdp.send(
            "Input.dispatchTouchEvent",
            {
                "type": kind,
                "touchPoints": [
                    {"x": x, "y": y, "id": i} for i, (x, y) in enumerate(points)
                ],
            },
        )

    return touch


def test_a_tap_that_drifts_a_few_pixels_still_places(stack, open_page):
    """A finger is less steady than a mouse: 8 px of drift is a tap, 30 px a pan."""
    url = stack.servers[0].url
    stack.manage(
        "createcanvas", "slop", "--width", "64", "--height", "64", "--cooldown", "0"
    )
    colours = palette(url, "slop")
    page = open_page(f"{url}/c/slop/?x=32&y=32&z=6", **PHONE)
    touch = touch_on(page)
    page.locator('[data-color="12"]').tap()
    before = view_of(page)
    px, py = screen_point(page, 30, 30)
    touch("touchStart", [(px, py)])
    for dx, dy in [(3, 2), (6, 3), (8, 1)]:
        touch("touchMove", [(px + dx, py + dy)])
    touch("touchEnd", [])
    wait_colours(page, {(30, 30): colours[12]})
    assert board_bytes(url, "slop")[30 * 64 + 30] == 12
    assert view_of(page) == before

    # A real drag by a finger still pans and never places (no cooldown to stop it).
    px, py = screen_point(page, 20, 20)
    touch("touchStart", [(px, py)])
    for step in range(1, 7):
        touch("touchMove", [(px + step * 5, py)])
    touch("touchEnd", [])
    wait_view(page, lambda v: v != before)
    page.wait_for_timeout(500)
    assert set(board_bytes(url, "slop")) == {0, 12}


def open_with_socket(browser, errors, url: str, handler, **context_options):
    """A page whose WebSocket is handed to `handler` (a Playwright WebSocketRoute)."""
    context = browser.new_context(**({"viewport": DESKTOP} | context_options))
    page = context.new_page()
    errors.watch(page)
    page.route_web_socket("**/ws/canvases/**", handler)
    page.goto(url)
    return context, page


def test_the_board_is_fetched_without_waiting_for_hello_and_kept_in_step(
    stack, browser, errors
):
    """The snapshot is requested while the socket is still connecting; when the
    hello names a newer seq than the snapshot's, the page refetches."""
    url = stack.servers[0].url
    stack.manage("createcanvas", "early", "--width", "16", "--height", "16")
    colours = palette(url, "early")
    sockets = []

    def hold(ws):
        sockets.append(ws)  # never connected to the server: no hello until sent

    context, page = open_with_socket(
        browser, errors, f"{url}/c/early/?x=8&y=8&z=20", hold
    )
    try:
        # No hello has been sent (the socket goes nowhere), yet the board comes.
        page.wait_for_function(
            "() => performance.getEntriesByName('place:board-decoded').length",
            timeout=10000,
        )
        assert len(sockets) == 1
        board_requests = []
        page.on(
            "request",
            lambda r: board_requests.append(r) if r.url.endswith("/board") else None,
        )
        # A change after that snapshot (seq 1): the hello says so, no frame does.
        place_live(stack.servers[0], "early", [(3, 4, 5)])
        hello = {"type": "hello", "seq": 1, "cooldown_seconds": 0}
        hello |= {"cooldown_remaining": 0, "can_place": False, "user": None}
        sockets[0].send(json.dumps(hello))
        wait_live(page)
        wait_colours(page, {(3, 4): colours[5], (4, 4): PALETTE_WHITE})
        assert len(board_requests) == 1
        # The stream goes on from the hello: a repeat is skipped, the next drawn.
        sockets[0].send(json.dumps({"type": "pixels", "updates": [[1, 3, 4, 9]]}))
        sockets[0].send(json.dumps({"type": "pixels", "updates": [[2, 6, 6, 7]]}))
        wait_colours(page, {(3, 4): colours[5], (6, 6): colours[7]})
    finally:
        context.close()


def test_ban_and_pause_reasons_stay_on_the_cooldown(stack, open_page):
    url = stack.servers[0].url
    stack.manage("createcanvas", "why", "--width", "32", "--height", "32")
    page = open_page(f"{url}/c/why/?x=16&y=16&z=8", timezone_id="America/New_York")
    cooldown = page.locator('[data-role="cooldown"]')
    set_ban(stack, page.locator(".who").inner_text(), 2)
    page.reload()
    wait_live(page)
    page.wait_for_function(
        "el => /banned/i.test(el.textContent)", arg=cooldown.element_handle()
    )
    page.locator('[data-role="message"]').wait_for(state="hidden", timeout=8000)
    title = cooldown.get_attribute("title")
    assert "spam" in title and re.search(r"\bE[SD]T\b", title), title
    description = page.evaluate(
        "el => el.getAttribute('aria-describedby').split(' ')"
        ".map(id => document.getElementById(id).textContent).join(' ')",
        cooldown.element_handle(),
    )
    assert "spam" in description and "banned until" in description.lower()

    set_ban(stack, page.locator(".who").inner_text(), -1)
    set_open(stack, "why", False)
    page.reload()
    wait_live(page)
    page.wait_for_function(
        "el => /paused/i.test(el.textContent)", arg=cooldown.element_handle()
    )
    page.locator('[data-role="message"]').wait_for(state="hidden", timeout=8000)
    assert "paused by the moderators" in cooldown.get_attribute("title")
    set_open(stack, "why", True)
    page.wait_for_function(
        "el => /ready/i.test(el.textContent)", arg=cooldown.element_handle()
    )
    assert "paused" not in cooldown.get_attribute("title").lower()


def test_a_ban_made_and_lifted_live_shows_at_once(stack, browser, errors):
    """`banned` and `unbanned` frames reach an open page (injected here)."""
    url = stack.servers[0].url
    stack.manage("createcanvas", "live-ban", "--width", "32", "--height", "32")
    sockets = []

    def forward(ws):
        ws.connect_to_server()
        sockets.append(ws)

    context, page = open_with_socket(
        browser, errors, f"{url}/c/live-ban/?x=16&y=16&z=8", forward
    )
    try:
        wait_live(page)
        cooldown = page.locator('[data-role="cooldown"]')
        message = page.locator('[data-role="message"]')
        assert "ready" in cooldown.inner_text().lower()
        ban = {"type": "banned", "until": "9999-01-01T00:00:00+00:00"}
        sockets[0].send(json.dumps(ban | {"reason": "griefing"}))
        page.wait_for_function(
            "el => el.textContent === 'Banned'", arg=cooldown.element_handle()
        )
        assert "for good (griefing)" in message.inner_text()
        assert "for good" in cooldown.get_attribute("title")
        sockets[0].send(json.dumps({"type": "unbanned"}))
        page.wait_for_function(
            "el => /ready/i.test(el.textContent)", arg=cooldown.element_handle()
        )
        assert message.inner_text() == "Your ban has been lifted."
        assert "griefing" not in cooldown.get_attribute("title")
    finally:
        context.close()


def test_the_palette_is_one_tab_stop_with_arrow_keys_inside(stack, open_page):
    url = stack.servers[0].url
    page = open_page(f"{url}/c/keys/?x=20&y=20&z=8")
    group = page.locator(".palette")
    assert group.get_attribute("role") == "radiogroup"
    focused = "() => document.activeElement.dataset.color ?? document.activeElement"
    focused += ".dataset.role"
    page.locator('[data-role="board"]').focus()
    page.keyboard.press("Tab")
    assert page.evaluate(focused) == "0"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.evaluate(focused) == "2"
    page.keyboard.press("Space")
    swatch = page.locator('[data-color="2"]')
    assert swatch.get_attribute("aria-checked") == "true"
    assert swatch.get_attribute("role") == "radio"
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")  # wraps round to the last colour
    assert page.evaluate(focused) == "15"
    page.keyboard.press("Tab")
    assert page.evaluate(focused) == "zoom-out"
    # Back into the palette lands on the chosen colour; one more leaves it.
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(focused) == "2"
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(focused) == "board"
    # Clicking still chooses, and a second click puts the colour down.
    page.locator('[data-color="7"]').click()
    assert page.locator('[data-color="7"]').get_attribute("aria-checked") == "true"
    assert swatch.get_attribute("aria-checked") == "false"
    page.locator('[data-color="7"]').click()
    assert page.locator('[data-color="7"]').get_attribute("aria-checked") == "false"


def test_a_page_opened_without_a_view_shows_exactly_the_view_its_address_names(
    stack, open_page
):
    """The fitted zoom of a big canvas is no round number: the page opens at the
    zoom the address says (two decimals), not the fraction it fitted, so a click
    far from the centre lands on the pixel the address puts there."""
    url = stack.servers[0].url
    stack.manage(
        "createcanvas", "fit", "--width", "1000", "--height", "1000", "--cooldown", "0"
    )
    page = open_page(f"{url}/c/fit/")
    x, y, z = wait_view(page)
    assert z < 1
    page.locator('[data-color="12"]').click()
    # About 250 screen pixels right of and 150 above the centre.
    target = (int(x) + round(250 / z), int(y) - round(150 / z))
    click_pixel(page, *target)
    deadline = time.monotonic() + 5
    while 12 not in board_bytes(url, "fit") and time.monotonic() < deadline:
        time.sleep(0.1)
    board = board_bytes(url, "fit")
    placed = [(i % 1000, i // 1000) for i, c in enumerate(board) if c == 12]
    assert placed == [target]


def test_a_visitor_on_a_small_phone_sees_the_palette_and_inspector_in_full(
    tmp_path, open_page
):
    """320 px wide, login required: the eight swatches a row fit on the screen,
    and the inspector opens above the toolbar (taller by the join hint) rather
    than under it, with a close button a finger can hit."""
    stack = make_stack(tmp_path, env={"PLACE_REQUIRE_LOGIN": "true"})
    page = None
    try:
        stack.manage("createcanvas", "s", "--width", "32", "--height", "32")
        url = stack.servers[0].url
        small = PHONE | {"viewport": {"width": 320, "height": 568}}
        page = open_page(f"{url}/c/s/?x=16&y=16&z=8", **small)
        assert page.locator(".join").is_visible()
        for swatch in page.locator("[data-color]").all():
            box = swatch.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 320
            assert box["width"] >= 30 and box["height"] >= 30, "big enough to tap"
        page.touchscreen.tap(*screen_point(page, 16, 16))
        inspector = page.locator('[data-role="inspector"]')
        inspector.wait_for(state="visible")
        shown = inspector.bounding_box()
        toolbar = page.locator(".toolbar").bounding_box()
        assert shown["y"] + shown["height"] <= toolbar["y"]
        close = inspector.get_by_role("button", name="Close the inspector")
        assert min(close.bounding_box()["width"], close.bounding_box()["height"]) >= 40
        close.tap()
        inspector.wait_for(state="hidden")
    finally:
        if page:
            page.close()
        stack.stop()
