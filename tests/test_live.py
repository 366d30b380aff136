"""Real daphne processes: the product as operators run it."""

import asyncio
import urllib.request

import pytest

from .live import make_stack
from .wsclient import Player, anonymous_cookie

pytestmark = pytest.mark.live


@pytest.fixture
def stack_factory(tmp_path):
    stacks = []

    def make(**kwargs):
        stack = make_stack(tmp_path, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


def get_json(url: str):
    import json

    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_migrate_creates_main_and_daphne_serves_everything(stack_factory):
    stack = stack_factory(server_module="daphne")  # the contract's own command
    server = stack.servers[0]
    meta = get_json(server.url + "/api/canvases/main/")
    assert (meta["width"], meta["height"], meta["cooldown_seconds"]) == (
        1000,
        1000,
        300,
    )
    assert len(meta["palette"]) == 16 and meta["seq"] == 0
    with urllib.request.urlopen(server.url + "/static/canvas/place.js") as response:
        assert response.status == 200 and b"use strict" in response.read()
    out = stack.manage(
        "createcanvas",
        "mini",
        "--width",
        "64",
        "--height",
        "48",
        "--cooldown",
        "5",
        "--title",
        "Mini",
    )
    assert "created canvas mini" in out.stdout
    assert get_json(server.url + "/api/canvases/mini/")["title"] == "Mini"
    stack.manage("createcanvas", "mini", "--cooldown", "9")
    meta = get_json(server.url + "/api/canvases/mini/")
    assert (meta["width"], meta["cooldown_seconds"], meta["title"]) == (64, 9, "Mini")

    async def place() -> tuple[dict, dict]:
        cookie = anonymous_cookie(server.url)
        async with (
            Player(server.ws, "mini", cookie=cookie) as placer,
            Player(server.ws, "mini") as watcher,
        ):
            return await placer.place(3, 4, 5), await watcher.next("pixels")

    accepted, frame = asyncio.run(place())
    assert accepted["type"] == "accepted" and frame["updates"] == [[1, 3, 4, 5]]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_eight_racing_placements_over_two_processes_admit_exactly_one(
    stack_factory, database
):
    stack = stack_factory(database=database, servers=2)
    cookie = anonymous_cookie(stack.servers[0].url)

    async def race() -> list[dict]:
        players = [Player(stack.servers[i % 2].ws, cookie=cookie) for i in range(8)]
        for player in players:
            await player.__aenter__()
        try:
            for player in players:
                assert player.hello["can_place"] is True
            results = await asyncio.gather(
                *(p.place(i, 0, 5) for i, p in enumerate(players))
            )
        finally:
            for player in players:
                await player.__aexit__()
        return results

    results = asyncio.run(race())
    kinds = sorted(r["type"] if r["type"] == "accepted" else r["code"] for r in results)
    assert kinds == ["accepted"] + ["cooldown"] * 7
    assert get_json(stack.servers[1].url + "/api/canvases/main/")["seq"] == 1


def test_every_process_delivers_every_change_once_and_in_order(stack_factory):
    """Two processes on Redis and PostgreSQL: placements on either reach all."""
    # No message-rate limit: placements are answered fast enough (pooled
    # connections) that 25 in a row could outrun 20 a second; rates are not
    # what this test is about.
    stack = stack_factory(
        database="postgres", redis=True, servers=2, env={"PLACE_MESSAGE_RATE": "0"}
    )
    stack.manage(
        "createcanvas", "fast", "--width", "50", "--height", "50", "--cooldown", "0"
    )
    a, b = stack.servers
    cookies = [anonymous_cookie(a.url) for _ in range(4)]

    async def play() -> tuple[list[int], list[list[int]]]:
        watchers = [Player(s.ws, slug="fast") for s in (a, b, a, b)]
        placers = [
            Player((a, b)[i % 2].ws, slug="fast", cookie=c)
            for i, c in enumerate(cookies)
        ]
        for p in [*watchers, *placers]:
            await p.__aenter__()
        accepted: list[int] = []

        async def run(i: int, placer: Player) -> None:
            for n in range(25):
                result = await placer.place((i * 25 + n) % 50, i, n % 16)
                assert result["type"] == "accepted", result
                accepted.append(result["seq"])

        await asyncio.gather(*(run(i, p) for i, p in enumerate(placers)))
        streams = []
        for w in watchers:
            seqs: list[int] = []
            while not seqs or seqs[-1] < max(accepted):
                frame = await w.next("pixels", timeout=10)
                seqs += [u[0] for u in frame["updates"]]
            streams.append(seqs)
        starts = [w.hello["seq"] for w in watchers]
        for p in [*watchers, *placers]:
            await p.__aexit__()
        return sorted(accepted), [s for s in streams], starts

    accepted, streams, starts = asyncio.run(play())
    assert accepted == list(range(1, 101))
    for seqs, start in zip(streams, starts, strict=True):
        assert seqs == list(range(start + 1, 101))


@pytest.mark.parametrize("redis", [False, True], ids=["in-memory", "redis"])
def test_rollback_command_reaches_connected_players(stack_factory, redis):
    """The command runs in its own process; its changes still reach open sockets:
    through Redis at once, or through the hub's database check without it."""
    stack = stack_factory(redis=redis)
    server = stack.servers[0]
    stack.manage("createcanvas", "mod", "--width", "20", "--height", "20",
                 "--cooldown", "0")  # fmt: skip
    cookie = anonymous_cookie(server.url)

    async def play() -> tuple[str, list[list[int]]]:
        async with (
            Player(server.ws, "mod", cookie=cookie) as griefer,
            Player(server.ws, "mod") as watcher,
        ):
            for x in range(3):
                assert (await griefer.place(x, 5, 3))["type"] == "accepted"
            seen: list[list[int]] = []
            while len(seen) < 3:
                seen += (await watcher.next("pixels"))["updates"]
            out = await asyncio.to_thread(
                stack.manage, "rollback", "mod", "--user", griefer.hello["user"],
                "--reason", "test",
            )  # fmt: skip
            rolled: list[list[int]] = []
            while len(rolled) < 3:
                rolled += (await watcher.next("pixels", timeout=10))["updates"]
            return out.stdout, rolled

    stdout, rolled = asyncio.run(play())
    assert stdout.strip() == "3 placements rolled back, 3 pixels changed"
    assert sorted((u[1], u[2], u[3]) for u in rolled) == [(x, 5, 0) for x in range(3)]
    assert [u[0] for u in rolled] == [4, 5, 6]


def test_floods_stray_paths_and_unknown_canvases_leave_no_tracebacks(stack_factory):
    """Misbehaving clients get their documented answers, and the log stays clean."""
    import websockets
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    stack = stack_factory()
    server = stack.servers[0]
    origin = {"Origin": server.url}

    async def flood_without_reading() -> int | None:
        async with websockets.connect(
            server.ws + "/ws/canvases/main/", additional_headers=origin
        ) as socket:
            try:
                for _ in range(600):
                    await socket.send('{"type": "nope"}')
                    await asyncio.sleep(0.003)
            except ConnectionClosed:
                pass
            await asyncio.wait_for(socket.wait_closed(), 10)
            return socket.close_code

    async def stray_path() -> int:
        try:
            await websockets.connect(
                server.ws + "/ws/elsewhere/", additional_headers=origin
            )
        except InvalidStatus as refused:
            return refused.response.status_code
        raise AssertionError("a socket on an unknown path was accepted")

    async def unknown_canvas() -> int | None:
        async with websockets.connect(
            server.ws + "/ws/canvases/no-such-canvas/", additional_headers=origin
        ) as socket:
            await socket.wait_closed()
            return socket.close_code

    # 4008, or 1006 when the flood is still arriving as the server closes: the
    # unread frames make the closing side's TCP reset, which discards the close
    # frame in flight (kernel behaviour; a client that pauses sees 4008).
    assert asyncio.run(flood_without_reading()) in (4008, 1006)
    assert asyncio.run(stray_path()) == 403
    assert asyncio.run(unknown_canvas()) == 4004
    asyncio.run(asyncio.sleep(0.5))
    log = server.log.read_text()
    assert "Traceback" not in log and "Exception inside application" not in log, log


def test_debug_off_daphne_alone_serves_a_working_site_over_plain_http(
    stack_factory, tmp_path
):
    """No collectstatic, no TLS: the first start collects, pages and logins work."""
    import re

    static_root = tmp_path / "never-collected"
    stack = stack_factory(
        env={
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": "live-test-secret-key-not-for-production-0123456789",
            "DJANGO_STATIC_ROOT": str(static_root),
        }
    )
    server = stack.servers[0]
    with urllib.request.urlopen(server.url + "/") as response:
        assert response.url == server.url + "/"  # no redirect to https
        html = response.read().decode()
        cookies = response.headers.get_all("Set-Cookie") or []
    script = re.search(r"/static/canvas/place\.[0-9a-f]{12}\.js", html)
    assert script, html[:400]
    with urllib.request.urlopen(server.url + script.group(0)) as response:
        assert b"use strict" in response.read()
    # Cookies a plain-HTTP browser keeps: none is marked Secure.
    assert not any("secure" in cookie.lower() for cookie in cookies), cookies
    assert (static_root / "staticfiles.json").exists()
