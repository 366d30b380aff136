"""The production launcher (placeproject/server.py): daphne's rules, cheaper upkeep.

The unit tests drive PlaceServer's two periodic jobs by hand with a stand-in
reactor; the live ones run `python -m placeproject.server` and watch a socket.
"""

import asyncio
import json
import logging
import struct

import pytest
from daphne.ws_protocol import WebSocketProtocol

from placeproject import server as srv

from .live import make_stack


class Reactor:
    def __init__(self) -> None:
        self.calls: list = []

    def callLater(self, delay, fn, *args):  # noqa: N802 (twisted's name)
        self.calls.append((delay, fn, *args))


class Socket(WebSocketProtocol):
    """An open WebSocket as daphne's protocol looks to the server's checks."""

    def __init__(self, opened: float) -> None:
        self.state = self.STATE_OPEN
        self.client_addr, self.path = ["127.0.0.1", 5000], b"/ws/canvases/main/"
        self.socket_opened = self.last_ping = opened
        self.checks = 0
        self.errors: list = []

    def check_timeouts(self) -> None:
        # As daphne's: a ping when one is due (timing comes from the patched clock).
        self.checks += 1
        now = srv.time.time()
        if now - self.last_ping > 60:
            self.last_ping = now

    def handle_exception(self, exception) -> None:
        self.errors.append(exception)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(srv, "reactor", Reactor())
    now = [1000.0]
    monkeypatch.setattr(srv.time, "time", lambda: now[0])
    instance = srv.PlaceServer(
        application=None, endpoints=["tcp:port=0"], ping_interval=60
    )
    instance.connections = {}
    instance.now = now
    return instance


async def test_inbox_hands_events_over_in_order_and_keeps_nothing_when_empty():
    inbox = srv.Inbox()
    getter = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"n": 1})
    inbox.put_nowait({"n": 2})
    assert await getter == {"n": 1}
    assert await inbox.get() == {"n": 2}
    assert inbox.items is None and inbox.waiters is None


def test_only_sockets_due_are_checked_and_each_at_its_ping_time(server):
    sockets = [Socket(opened=1000.0) for _ in range(1000)]
    for socket in sockets:
        server.protocol_connected(socket)
    server.now[0] = 1001.0
    server.timeout_checker()
    assert sum(s.checks for s in sockets) == 0  # nothing due in the first 2 s
    server.now[0] = 1002.5
    server.timeout_checker()
    assert {s.checks for s in sockets} == {1}  # daphne's first look, 2 s in
    server.now[0] = 1040.0
    server.timeout_checker()
    assert {s.checks for s in sockets} == {1}  # idle: nothing until a ping is due
    sockets[0].last_ping = 1030.0  # it sent a message: its ping moves later
    server.now[0] = 1061.0
    server.timeout_checker()
    assert sockets[0].checks == 2 and {s.checks for s in sockets[1:]} == {2}
    server.now[0] = 1091.0
    server.timeout_checker()
    assert sockets[0].checks == 3 and {s.checks for s in sockets[1:]} == {2}


async def test_a_finished_application_is_reaped_and_a_closed_socket_forgotten(
    server,
):
    async def app(scope, receive, send):
        await receive()

    server.application = app
    socket = Socket(opened=1000.0)
    server.protocol_connected(socket)
    inbox = server.create_application(socket, {"type": "websocket"})
    server.application_checker()
    assert "application_instance" in server.connections[socket]  # still running
    assert not server.attention  # nothing to look at while it runs
    inbox.put_nowait({"type": "websocket.connect"})
    await asyncio.sleep(0.01)
    server.application_checker()
    assert "application_instance" not in server.connections[socket]
    server.protocol_disconnected(socket)
    server.application_checker()
    assert socket not in server.connections and not server.attention


async def test_an_application_that_outlives_its_socket_is_killed(server, caplog):
    async def app(scope, receive, send):
        await asyncio.sleep(3600)

    server.application = app
    server.application_close_timeout = 10
    socket = Socket(opened=1000.0)
    server.protocol_connected(socket)
    server.create_application(socket, {"type": "websocket"})
    task = server.connections[socket]["application_instance"]
    server.protocol_disconnected(socket)
    server.application_checker()
    assert not task.done() and socket in server.attention
    server.now[0] += 11
    with caplog.at_level(logging.WARNING, logger="daphne.server"):
        server.application_checker()
    assert "took too long to shut down" in caplog.text
    await asyncio.sleep(0)
    assert task.cancelled()
    server.application_checker()
    assert socket not in server.connections


async def test_an_application_error_is_logged_and_closes_its_socket(server, caplog):
    async def app(scope, receive, send):
        raise RuntimeError("boom")

    server.application = app
    socket = Socket(opened=1000.0)
    server.protocol_connected(socket)
    server.create_application(socket, {"type": "websocket"})
    await asyncio.sleep(0.01)
    with caplog.at_level(logging.ERROR, logger="daphne.server"):
        server.application_checker()
    assert "Exception inside application: boom" in caplog.text
    assert [str(e) for e in socket.errors] == ["boom"]


class Transport:
    def __init__(self) -> None:
        self.connected, self.lost, self.aborted = 1, False, False

    def loseConnection(self) -> None:  # noqa: N802 (twisted's name)
        self.lost = True  # waits for the peer to read what is buffered

    def abortConnection(self) -> None:  # noqa: N802
        self.aborted, self.connected = True, 0


@pytest.mark.parametrize("peer_reads", [False, True])
def test_a_graceful_close_is_cut_off_if_the_peer_never_reads(monkeypatch, peer_reads):
    reactor = Reactor()
    monkeypatch.setattr(srv, "reactor", reactor)
    protocol = srv.PlaceWebSocketProtocol()
    protocol.transport = transport = Transport()
    protocol._closeConnection(abort=False)
    assert transport.lost and not transport.aborted
    ((delay, fn, *args),) = reactor.calls
    assert delay == srv.LINGER_SECONDS
    if peer_reads:
        transport.connected = 0  # the close completed meanwhile
    fn(*args)
    assert transport.aborted is (not peer_reads)


# -- the launcher, live


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while len(data) >= 2:
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = struct.unpack("!H", data[2:4])[0], 4
        frames.append((data[0] & 0x0F, data[start : start + length]))
        data = data[start + length :]
    return frames


async def _raw_socket(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /ws/canvases/main/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Origin: http://127.0.0.1\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b" 101 " in head
    return reader, writer


async def _opcodes_for(reader: asyncio.StreamReader, seconds: float) -> list[int]:
    data = b""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except (TimeoutError, ConnectionResetError):
            break  # a client that never answers the close gets its socket reset
        if not chunk:
            break
        data += chunk
    return [opcode for opcode, _ in _frames(data)]


@pytest.mark.live
def test_the_launcher_pings_idle_sockets_and_closes_them_at_their_age_limit(
    tmp_path,
):
    stack = make_stack(tmp_path, servers=0)
    try:
        server = stack.start_server(
            None, "--ping-interval", "1", "--websocket_timeout", "6"
        )

        async def watch() -> list[int]:
            reader, writer = await _raw_socket(server.port)
            opcodes = await _opcodes_for(reader, 12)
            writer.close()
            return opcodes

        opcodes = asyncio.run(watch())
    finally:
        stack.stop()
    # hello (text), then keepalive pings, then the close at the age limit.
    assert opcodes[0] == 0x1
    assert opcodes.count(0x9) >= 2
    assert opcodes[-1] == 0x8


async def test_inbox_serves_two_waiting_gets_and_passes_on_a_cancelled_wake_up():
    inbox = srv.Inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"n": 1})
    inbox.put_nowait({"n": 2})
    both = await asyncio.wait_for(asyncio.gather(first, second), 1)
    assert sorted(x["n"] for x in both) == [1, 2]

    woken = asyncio.ensure_future(inbox.get())
    other = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"n": 3})  # wakes `woken`...
    woken.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(other, 1) == {"n": 3}


def test_a_check_that_raises_does_not_stop_the_others(server, caplog):
    class Broken(Socket):
        def check_timeouts(self) -> None:
            raise RuntimeError("finish() on a lost connection")

    broken, fine = Broken(opened=1000.0), Socket(opened=1000.0)
    server.protocol_connected(broken)
    server.protocol_connected(fine)
    server.now[0] = 1003.0
    with caplog.at_level(logging.ERROR, logger="daphne.server"):
        server.timeout_checker()
    assert fine.checks == 1 and "timeout check" in caplog.text
    assert srv.reactor.calls[-1] == (srv.TIMEOUT_SECONDS, server.timeout_checker)
    assert len(server.due) == 2  # both stay scheduled


def test_an_upgraded_request_is_let_go_by_its_http_channel(server):
    class Channel:
        def __init__(self) -> None:
            self.requests: list = []

    class Upgraded:
        transport = None  # daphne hands the transport to the WebSocket

        def __init__(self, channel) -> None:
            self.channel = channel
            channel.requests.append(self)

    channel = Channel()
    request = Upgraded(channel)
    server.protocol_connected(request)
    server.protocol_disconnected(request)
    assert channel.requests == []


@pytest.mark.live
def test_the_launcher_closes_bad_frames_with_their_codes_and_no_reply(tmp_path):
    stack = make_stack(tmp_path, servers=0)
    try:
        server = stack.start_server(None)

        async def send_bad(
            first_byte: int, payload: bytes, length: int | None = None
        ) -> list[tuple]:
            reader, writer = await _raw_socket(server.port)
            mask = b"\x01\x02\x03\x04"
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            length = len(payload) if length is None else length
            if length < 126:
                header = bytes([first_byte, 0x80 | length])
            else:  # the 64-bit length form
                header = bytes([first_byte, 0x80 | 127]) + struct.pack("!Q", length)
            writer.write(header + mask + masked)
            data = b""
            while chunk := await asyncio.wait_for(reader.read(65536), 10):
                data += chunk
                if any(op == 0x8 for op, _ in _frames(data)):
                    break
            writer.close()
            return _frames(data)

        async def handshake_status(origin: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(
                b"GET /ws/canvases/main/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Origin: " + origin + b"\r\n\r\n"
            )
            status = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            return status.split(b" ")[1]

        place = b'{"type": "place", "x": 1, "y": 1, "color": 1}'
        not_utf8 = asyncio.run(send_bad(0x81, b'{"type": "place", "x": \xff}'))
        reserved_bit = asyncio.run(send_bad(0xC1, place))  # RSV1, no extension
        # Past daphne's own 1 MiB limit, refused on its header: still the
        # contract's 4009 for a frame over 16 KiB, not autobahn's 1009.
        huge = asyncio.run(send_bad(0x81, b'{"type": ', length=1_500_000))
        # Refused origins all get the same 403 (autobahn would say 400 to null).
        refused = [
            asyncio.run(handshake_status(o)) for o in [b"null", b"http://x.test"]
        ]
        assert refused == [b"403", b"403"]
    finally:
        stack.stop()
    for frames, code in [(not_utf8, 1007), (reserved_bit, 1002), (huge, 4009)]:
        texts = [json.loads(body)["type"] for op, body in frames if op == 0x1]
        closes = [body for op, body in frames if op == 0x8]
        assert set(texts) <= {"hello", "online"}  # the bad frame got no answer
        assert closes and struct.unpack("!H", closes[0][:2])[0] == code


def test_the_launcher_gives_handshakes_30_s_unless_told_otherwise():
    """Daphne's 5 s dropped most of a storm of 1,000 handshakes on one process
    (each had already done its database work); operators can still choose."""
    cli = srv.PlaceCommandLine()
    default = cli.parser.parse_args(["placeproject.asgi:application"])
    assert default.websocket_connect_timeout == srv.HANDSHAKE_SECONDS == 30
    chosen = cli.parser.parse_args(
        ["--websocket_connect_timeout", "7", "placeproject.asgi:application"]
    )
    assert chosen.websocket_connect_timeout == 7


def test_autobahn_debug_lines_are_not_formatted_when_nothing_logs_them(monkeypatch):
    import autobahn.websocket.protocol as autobahn_protocol

    monkeypatch.setattr(autobahn_protocol, "pformat", autobahn_protocol.pformat)
    srv._skip_autobahn_debug_formatting()
    assert "not formatted" in autobahn_protocol.pformat([("a", 1, "b")] * 100)


def test_the_launcher_refuses_a_database_with_migrations_to_apply(tmp_path):
    """A deploy that migrated another database (the default SQLite file, say)
    gets one clear line and exit status 1, not a worker serving 500s."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("PLACE_")}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "-m", "placeproject.server", "-p", "0"]
        + ["placeproject.asgi:application"],
        cwd=Path(srv.__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "not applied to" in result.stderr
    assert "run `python manage.py migrate`" in result.stderr


@pytest.mark.parametrize("unsent", [0, 100])
def test_keepalive_pings_go_straight_to_the_kernel_unless_bytes_wait(unsent):
    """The launcher's sockets send autobahn's own frames as broadcasts go:
    one send() when nothing is queued, behind twisted's buffer otherwise."""
    from types import SimpleNamespace

    from .test_fanout import FakeSocket, FakeTransport

    wire = srv.PlaceWebSocketProtocol()
    wire.factory = SimpleNamespace(isServer=True)
    wire.maskServerFrames = False
    wire.logFrames = False
    wire.state = WebSocketProtocol.STATE_OPEN
    wire.send_queue = []
    wire.transport = FakeTransport(unsent)
    wire.transport.socket = FakeSocket(accepts=10_000)
    wire.sendPing(b"ping")
    frame = b"\x89\x04ping"
    if unsent:
        assert wire.transport.socket.sent == [] and wire.transport.written == [frame]
    else:
        assert wire.transport.socket.sent == [frame] and wire.transport.written == []


def test_the_launcher_listens_with_a_deep_accept_queue():
    """Twisted's default of 50 overflowed in a storm of reconnects (3,786
    dropped connections for 2,000 sockets, each retried after 1, 3, 7 s)."""
    assert srv._with_backlog("tcp:port=8001:interface=127.0.0.1") == (
        f"tcp:port=8001:interface=127.0.0.1:backlog={srv.LISTEN_BACKLOG}"
    )
    assert srv._with_backlog("unix:/run/place.sock").endswith(":backlog=2048")
    assert srv._with_backlog("tcp:port=1:backlog=10") == "tcp:port=1:backlog=10"
    assert srv._with_backlog("fd:fileno=3") == "fd:fileno=3"  # already listening


def test_unmask_matches_the_websocket_rule_for_every_short_length():
    mask = b"\x9a\x01\xfe\x37"
    for length in range(126):
        payload = bytes((i * 37) % 256 for i in range(length))
        expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert srv._unmask(mask, payload) == expected


def _masked(first_byte: int, payload: bytes) -> bytes:
    mask = b"\x05\x06\x07\x08"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        return bytes([first_byte, 0x80 | len(payload)]) + mask + masked
    return (
        bytes([first_byte, 0x80 | 126])
        + struct.pack("!H", len(payload))
        + mask
        + masked
    )


def _bad_place(size: int) -> bytes:
    """A place request refused as bad_request, padded to `size` bytes."""
    body = b'{"type": "place", "x": -1, "y": 0, "color": 0}'
    return body[:-1] + b" " * (size - len(body)) + b"}"


@pytest.mark.live
def test_frames_in_every_framing_get_one_answer_each(tmp_path):
    """Small whole frames take the launcher's short road, everything else
    autobahn's parser: split across reads, two in one read, 125 and 126 bytes,
    fragmented, with a ping between. Each request is answered once, in order."""
    stack = make_stack(tmp_path, servers=0)
    try:
        server = stack.start_server(None)

        async def scenario() -> list[tuple[int, bytes]]:
            reader, writer = await _raw_socket(server.port)
            two = _masked(0x81, _bad_place(60)) + _masked(0x81, _bad_place(61))
            writer.write(two)  # two whole frames in one read
            split = _masked(0x81, _bad_place(125))
            for i in range(len(split)):  # one byte per read
                writer.write(split[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.002)
            writer.write(_masked(0x81, _bad_place(126)))  # 16-bit length form
            fragmented = _bad_place(80)
            writer.write(
                _masked(0x01, fragmented[:30])  # text, not final
                + _masked(0x89, b"hi")  # a ping inside the message
                + _masked(0x80, fragmented[30:])  # continuation, final
            )
            writer.write(_masked(0x81, b'{"type": "place", "x": -1}') + b"\x81")
            await writer.drain()
            data = b""
            while data.count(b'"rejected"') < 6 or b"\x8a\x02hi" not in data:
                data += await asyncio.wait_for(reader.read(65536), 10)
            writer.close()
            return _frames(data)

        frames = asyncio.run(scenario())
    finally:
        stack.stop()
    texts = [json.loads(body) for op, body in frames if op == 0x1]
    answers = [t for t in texts if t["type"] not in ("hello", "online")]
    # No session cookie: a whole place request is refused as login_required,
    # the malformed last one as bad_request; one answer each, in order.
    codes = [(a["type"], a["code"]) for a in answers]
    assert codes == [("rejected", "login_required")] * 5 + [("rejected", "bad_request")]
    assert (0xA, b"hi") in frames  # the ping was answered


class Wire(srv.PlaceWebSocketProtocol):
    """The launcher's protocol with what processData reads, and no network."""

    def __init__(self, data: bytes) -> None:
        from autobahn.websocket.protocol import TrafficStats

        self.data, self.current_frame, self.inside_message = data, None, False
        self.state, self.failedByMe = self.STATE_OPEN, False
        self._perMessageCompress, self.logFrames, self.trackedTimings = (
            None,
            False,
            None,
        )
        self.applyMask, self.utf8validateIncoming = True, True
        self.maxFramePayloadSize = self.maxMessagePayloadSize = 1 << 20
        self.trafficStats = TrafficStats()
        self.autoPingTimeoutCall, self.autoPingRestartOnAnyTraffic = None, True
        self.messages: list = []
        self.general = 0

    def _onMessage(self, payload, isBinary) -> None:  # noqa: N803 (autobahn's name)
        self.messages.append((payload, isBinary))


def test_a_small_whole_text_frame_skips_autobahns_general_parser(monkeypatch):
    def general(self):
        self.general += 1
        return False

    monkeypatch.setattr(srv.WebSocketProtocol, "processData", general)
    wire = Wire(_masked(0x81, b'{"type": "place"}') + b"\x81")
    assert wire.processData() is True  # a partial frame follows
    assert wire.messages == [(b'{"type": "place"}', False)] and wire.general == 0
    assert wire.trafficStats.incomingWebSocketMessages == 1
    assert wire.processData() is False and wire.general == 1  # partial: general
    for other in [
        _masked(0x81, _bad_place(126)),  # 16-bit length form
        _masked(0x01, b"{}"),  # not final
        _masked(0x82, b"{}"),  # binary
        _masked(0x89, b"hi"),  # ping
        _masked(0x81, b"\xff"),  # not UTF-8: autobahn closes with 1007
    ]:
        wire = Wire(other)
        wire.processData()
        assert wire.general == 1 and wire.messages == []
