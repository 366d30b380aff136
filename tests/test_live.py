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
    stack = stack_factory()
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
    stack = stack_factory(database="postgres", redis=True, servers=2)
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
