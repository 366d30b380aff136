"""Faults with real processes: Redis dies, a server dies, the database vanishes."""

import asyncio
import contextlib
import sqlite3
import time
import urllib.request

import pytest
import websockets

from .faults import RedisServer, TcpProxy, blackholed, require_iptables
from .live import make_stack
from .wsclient import Player, anonymous_cookie

pytestmark = pytest.mark.live


def board_bytes(server) -> bytes:
    with urllib.request.urlopen(server.url + "/api/canvases/f/board", timeout=10) as r:
        return r.read()


def replay(width: int, height: int, changes: dict[int, tuple[int, int, int]]) -> bytes:
    board = bytearray(width * height)
    for seq in sorted(changes):
        x, y, color = changes[seq]
        board[y * width + x] = color
    return bytes(board)


class Watcher:
    """Collects a socket's stream and checks it is gap-free and in order."""

    def __init__(self, player: Player) -> None:
        self.player = player
        self.seqs: list[int] = []
        self.updates: dict[int, tuple[int, int, int]] = {}
        self.arrived: dict[int, float] = {}
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        while True:
            frame = await self.player.next("pixels", timeout=60)
            now = time.monotonic()
            for seq, x, y, color in frame["updates"]:
                self.seqs.append(seq)
                self.updates[seq] = (x, y, color)
                self.arrived[seq] = now

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def wait_for(self, seq: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while seq not in self.arrived:
            assert time.monotonic() < deadline, f"seq {seq} never arrived"
            await asyncio.sleep(0.05)


async def placing(player: Player, stop: asyncio.Event, log: dict, row: int) -> None:
    n = 0
    while not stop.is_set():
        result = await player.place(n % 40, row, n % 16)
        assert result["type"] == "accepted", result
        log[result["seq"]] = (n % 40, row, n % 16)
        n += 1
        await asyncio.sleep(0.05)


def test_redis_killed_and_restarted_under_load_loses_nothing(tmp_path):
    redis = RedisServer(tmp_path)
    redis.start()
    # A long gap timeout separates the two paths: refills from the database
    # take seconds, the channel layer a fraction of one.
    stack = make_stack(
        tmp_path,
        database="postgres",
        servers=2,
        redis_url=redis.url,
        env={"PLACE_GAP_TIMEOUT": "2"},
    )
    try:
        stack.manage(
            "createcanvas", "f", "--width", "40", "--height", "40", "--cooldown", "0"
        )
        a, b = stack.servers
        cookies = [anonymous_cookie(a.url) for _ in range(2)]

        async def scenario() -> tuple[dict, list[Watcher]]:
            watchers = [Watcher(Player(s.ws, "f")) for s in (a, b)]
            placers = [
                Player(s.ws, "f", cookie=c)
                for s, c in zip((a, b), cookies, strict=True)
            ]
            for p in [*(w.player for w in watchers), *placers]:
                await p.__aenter__()
            for w in watchers:
                w.start()
            accepted: dict[int, tuple[int, int, int]] = {}
            stop = asyncio.Event()
            tasks = [
                asyncio.create_task(placing(p, stop, accepted, row))
                for row, p in enumerate(placers)
            ]
            await asyncio.sleep(1.5)
            redis.kill()
            await asyncio.sleep(3)
            redis.start()
            await asyncio.sleep(5)
            stop.set()
            await asyncio.gather(*tasks)
            # After the restart, a placement on one process reaches the other's
            # socket through the layer again: well inside the refill delay.
            probe = await placers[0].place(39, 39, 3)
            assert probe["type"] == "accepted"
            accepted[probe["seq"]] = (39, 39, 3)
            sent = time.monotonic()
            await watchers[1].wait_for(probe["seq"], timeout=10)
            assert watchers[1].arrived[probe["seq"]] - sent < 1.5
            for w in watchers:
                await w.wait_for(max(accepted), timeout=15)
                w.task.cancel()
            for p in [*(w.player for w in watchers), *placers]:
                with contextlib.suppress(Exception):
                    await p.__aexit__()
            return accepted, watchers

        accepted, watchers = asyncio.run(scenario())
        assert len(accepted) > 50
        for watcher in watchers:
            start = watcher.player.hello["seq"]
            assert watcher.seqs == list(range(start + 1, max(accepted) + 1))
            for seq, change in accepted.items():
                assert watcher.updates[seq] == change
        expected = replay(40, 40, accepted)
        for server in stack.servers:
            assert server.process.poll() is None, "a server died"
            assert board_bytes(server) == expected
            # The outage is in the log once, not once per publish or retry
            # (a 3 s outage here wrote "group_send failed" ~50 times a process).
            log = server.log.read_text()
            assert log.count("group_send failed") == 1
            assert log.count("Unexpected exception in receive task") <= 1
    finally:
        stack.stop()
        redis.kill()


def test_killed_server_leaves_no_connection_rows_and_clients_move_on(tmp_path):
    stack = make_stack(
        tmp_path,
        servers=2,
        env={"PLACE_HEARTBEAT_SECONDS": "1", "PLACE_CONNECTION_STALE_SECONDS": "4"},
    )
    db = tmp_path / "live.sqlite3"

    def rows() -> list[str]:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return [r[0] for r in conn.execute("SELECT server FROM canvas_connection")]

    try:
        a, b = stack.servers

        async def scenario() -> float:
            on_a = [Player(a.ws) for _ in range(3)]
            on_b = Player(b.ws)
            for p in [*on_a, on_b]:
                await p.__aenter__()
            assert len(rows()) == 4
            stack.kill(a)
            killed = time.monotonic()
            # Their sockets drop; each client reconnects, here to the survivor.
            for p in on_a:
                with pytest.raises(websockets.ConnectionClosed):
                    await p.next("never", timeout=10)
            moved = [Player(b.ws) for _ in on_a]
            for p in moved:
                await p.__aenter__()
                assert p.hello["type"] == "hello"
            while len(set(rows())) != 1 or len(rows()) != 4:
                assert time.monotonic() - killed < 20, rows()
                await asyncio.sleep(0.2)
            elapsed = time.monotonic() - killed
            for p in [on_b, *moved]:
                await p.__aexit__()
            return elapsed

        elapsed = asyncio.run(scenario())
        # Stale after 4 s, swept within a heartbeat: the same rule that bounds
        # the defaults (40 s + 15 s) inside a minute.
        assert elapsed < 4 + 1 + 3
    finally:
        stack.stop()


def test_a_restarted_server_drops_its_killed_predecessors_rows_at_start(tmp_path):
    """Before its first socket arrives: online counts are right at once, not
    after the stale time (40 s by default)."""
    stack = make_stack(tmp_path, servers=1)
    db = tmp_path / "live.sqlite3"

    def rows() -> int:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return conn.execute("SELECT COUNT(*) FROM canvas_connection").fetchone()[0]

    try:
        (old,) = stack.servers

        async def connect_and_kill() -> None:
            players = [Player(old.ws) for _ in range(3)]
            for p in players:
                await p.__aenter__()
            assert rows() == 3
            stack.kill(old)
            for p in players:
                with contextlib.suppress(Exception):
                    await p.__aexit__()

        asyncio.run(connect_and_kill())
        assert rows() == 3  # a SIGKILL deletes nothing
        stack.start_server()  # returns once it answers HTTP
        assert rows() == 0
    finally:
        stack.stop()


@contextlib.contextmanager
def behind_a_proxy(tmp_path, env: dict | None = None):
    """One server on PostgreSQL reached through a TcpProxy, with canvas `f`
    (40×40, no cooldown): yields the proxy, the server and a player's cookie."""
    from . import services_available as svc

    svc.require_postgres()
    proxy = TcpProxy(svc.POSTGRES_PORT, svc.POSTGRES_HOST)
    proxy.start()
    stack = make_stack(tmp_path, database="postgres", postgres_port=proxy.port, env=env)
    try:
        stack.manage(
            "createcanvas", "f", "--width", "40", "--height", "40", "--cooldown", "0"
        )
        server = stack.servers[0]
        yield proxy, server, anonymous_cookie(server.url)
    finally:
        stack.stop()
        proxy.cut()


def test_database_unreachable_gives_unavailable_then_recovers(tmp_path):
    with behind_a_proxy(tmp_path) as (proxy, server, cookie):

        async def scenario() -> None:
            async with Player(server.ws, "f", cookie=cookie) as player:
                assert (await player.place(1, 1, 1))["type"] == "accepted"
                proxy.cut()
                refused = await player.place(2, 2, 2)
                assert (
                    refused["type"] == "rejected" and refused["code"] == "unavailable"
                )
                assert refused["message"]
                proxy.start()
                deadline = time.monotonic() + 15
                while True:
                    result = await player.place(3, 3, 3)
                    if result["type"] == "accepted":
                        break
                    assert result["code"] == "unavailable"
                    assert time.monotonic() < deadline, "never recovered"
                    await asyncio.sleep(0.5)

        asyncio.run(scenario())
        assert server.process.poll() is None
        board = board_bytes(server)
        assert (
            board[1 * 40 + 1] == 1 and board[2 * 40 + 2] == 0 and board[3 * 40 + 3] == 3
        )


def test_a_database_host_that_vanishes_is_answered_in_seconds(tmp_path):
    """The database host drops off the network without a reset: the queries
    in flight fail after the connection's TCP timeout (10 s), the players
    hear `unavailable` instead of waiting for the kernel's ~15 minutes, and
    play resumes when the host is back."""
    require_iptables()
    # The writer keeps its connection between placements, as under load.
    idle = {"PLACE_INGEST_IDLE_CLOSE": "60"}
    with behind_a_proxy(tmp_path, env=idle) as (proxy, server, cookie):

        async def scenario() -> float:
            async with Player(server.ws, "f", cookie=cookie) as player:
                assert (await player.place(1, 1, 1))["type"] == "accepted"
                with blackholed(proxy.port):
                    started = time.monotonic()
                    await player.send({"type": "place", "x": 2, "y": 2, "color": 2})
                    answer = await player.next("accepted", "rejected", timeout=60)
                    waited = time.monotonic() - started
                    assert answer["type"] == "rejected"
                    assert answer["code"] == "unavailable"
                deadline = time.monotonic() + 30
                while (result := await player.place(3, 3, 3))["type"] != "accepted":
                    assert result["code"] == "unavailable"
                    assert time.monotonic() < deadline, "never recovered"
                    await asyncio.sleep(0.5)
                return waited

        waited = asyncio.run(scenario())
        assert waited < 40, f"answered after {waited:.0f} s"
        assert server.process.poll() is None
        board = board_bytes(server)
        assert board[1 * 40 + 1] == 1 and board[3 * 40 + 3] == 3


def test_a_connection_cut_between_batches_costs_no_placement(tmp_path):
    """The database is up, but the connection the ingest writer holds between
    batches was cut (a failover, an administrator's pg_terminate_backend, a
    proxy's idle timeout): the next batch runs again on a fresh connection
    instead of answering `unavailable` to every placement in it."""
    import psycopg

    from . import services_available as svc

    stack = make_stack(
        tmp_path,
        database="postgres",
        # The writer keeps its connection between placements, as under load.
        env={"PLACE_INGEST_IDLE_CLOSE": "30"},
    )
    database = stack.env["DATABASE_URL"].rsplit("/", 1)[1]

    def cut_every_connection() -> int:
        with psycopg.connect(svc.POSTGRES_ADMIN_URL, autocommit=True) as conn:
            return conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                [database],
            ).fetchone()[0]

    try:
        stack.manage(
            "createcanvas", "f", "--width", "40", "--height", "40", "--cooldown", "0"
        )
        server = stack.servers[0]
        cookie = anonymous_cookie(server.url)

        async def scenario() -> dict:
            accepted: dict[int, tuple[int, int, int]] = {}
            async with Player(server.ws, "f", cookie=cookie) as player:
                for n in range(4):
                    result = await player.place(n, 0, 1 + n)
                    assert result["type"] == "accepted", result
                    accepted[result["seq"]] = (n, 0, 1 + n)
                    assert cut_every_connection() >= 1
                    await asyncio.sleep(0.3)
                    result = await player.place(n, 1, 5 + n)
                    assert result["type"] == "accepted", result
                    accepted[result["seq"]] = (n, 1, 5 + n)
            return accepted

        accepted = asyncio.run(scenario())
        assert sorted(accepted) == list(range(1, 9))
        assert server.process.poll() is None
        assert board_bytes(server) == replay(40, 40, accepted)
        assert "running it again on a fresh one" in server.log.read_text()
    finally:
        stack.stop()
