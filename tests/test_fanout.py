"""The hub's per-socket write: one prepared frame, and the slow-client rule."""

import functools

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol

from canvas import hub as hub_module
from canvas import metrics


class FakeTransport:
    def __init__(self, unsent: int = 0):
        self.dataBuffer = b"x" * unsent
        self.offset = 0
        self._tempDataLen = 0
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abortConnection(self) -> None:
        self.aborted = True


class Listener:
    """Stands in for a consumer served by daphne: send=partial(handle_reply, proto)."""

    def __init__(self, unsent: int = 0):
        self.wire = WebSocketServerProtocol()
        self.wire.state = WebSocketProtocol.STATE_OPEN
        self.wire.send_queue = []
        self.wire.transport = FakeTransport(unsent)
        self.closed_with = None
        self.wire.sendClose = lambda code=None, reason=None: setattr(
            self, "closed_with", code
        )
        self.base_send = functools.partial(lambda proto, message: None, self.wire)
        self.ready = True
        self.delivered: list[str] = []

    async def deliver(self, frame: str) -> None:
        self.delivered.append(frame)


@pytest.fixture
def hub(settings):
    settings.PLACE_SLOW_CLIENT_BYTES = 64 * 1024
    return hub_module.Hub(canvas_id=1)


async def test_every_socket_gets_the_same_prebuilt_websocket_frame(hub):
    listeners = [Listener() for _ in range(3)]
    for listener in listeners:
        hub.join(listener)
    await hub.send_all('{"type":"pixels","updates":[[1,2,3,4]]}')
    frames = [listener.wire.transport.written for listener in listeners]
    assert all(len(written) == 1 for written in frames)
    (frame,) = frames[0]
    assert frame[0] == 0x81 and frame[2:] == b'{"type":"pixels","updates":[[1,2,3,4]]}'
    assert frames[0][0] is frames[1][0] is frames[2][0]  # framed once


async def test_a_socket_that_fell_behind_is_closed_with_4010_and_fed_no_more(hub):
    slow, fine = Listener(unsent=65 * 1024), Listener()
    hub.join(slow)
    hub.join(fine)
    before = metrics.SLOW_CLIENTS._value.get()
    await hub.send_all('{"type":"pixels","updates":[[1,2,3,4]]}')
    assert slow.closed_with == hub_module.CLOSE_TOO_SLOW == 4010
    assert slow.wire.transport.written == [] and slow not in hub.listeners
    assert fine.wire.transport.written and fine in hub.listeners
    assert metrics.SLOW_CLIENTS._value.get() == before + 1
    await hub.send_all('{"type":"pixels","updates":[[2,2,3,4]]}')
    assert slow.wire.transport.written == []


async def test_a_send_that_is_not_daphnes_goes_through_the_asgi_path(hub):
    """Only daphne's own send is bypassed; anything wrapping it gets deliver()."""

    class Wrapper:
        def __init__(self, real_send):
            self.real_send = real_send

        async def send(self, message):
            await self.real_send(message)

    listener = Listener()
    listener.base_send = Wrapper(listener.base_send).send
    hub.join(listener)
    await hub.send_all("frame")
    assert listener.wire.transport.written == [] and listener.delivered == ["frame"]


class FakeSocket:
    def __init__(self, accepts: int):
        self.accepts = accepts
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data[: self.accepts]))
        return min(self.accepts, len(data))


async def test_a_frame_goes_straight_to_the_kernel_and_only_the_rest_is_buffered(hub):
    whole, partial = Listener(), Listener()
    whole.wire.transport.socket = FakeSocket(accepts=10_000)
    partial.wire.transport.socket = FakeSocket(accepts=5)
    hub.join(whole)
    hub.join(partial)
    frame = '{"type":"pixels","updates":[[1,2,3,4]]}'
    await hub.send_all(frame)
    assert whole.wire.transport.socket.sent[0][2:] == frame.encode()
    assert whole.wire.transport.written == []
    sent, rest = partial.wire.transport.socket.sent[0], partial.wire.transport.written
    assert sent + b"".join(rest) == whole.wire.transport.socket.sent[0]


async def test_sockets_not_served_by_daphne_still_get_frames_through_deliver(hub):
    class Plain:
        ready = True

        def __init__(self):
            self.delivered = []

        async def deliver(self, frame):
            self.delivered.append(frame)

    plain = Plain()
    hub.join(plain)
    await hub.send_all("frame")
    assert plain.delivered == ["frame"]


async def test_only_an_open_ready_socket_with_nothing_queued_takes_the_short_road(
    hub,
):
    """Straight to the kernel only when nothing could be overtaken: a socket
    before its hello gets the frame in its backlog, one with bytes still in
    twisted's buffers gets it queued behind them, a closing one gets nothing."""
    fast, early, queued, closing = (Listener() for _ in range(4))
    early.ready = False
    queued.wire.transport._tempDataLen = 7  # the rest of a partial send
    closing.wire.state = WebSocketProtocol.STATE_CLOSING
    for listener in (fast, early, queued, closing):
        listener.wire.transport.socket = FakeSocket(accepts=10_000)
        hub.join(listener)
    frame = '{"type":"pixels","updates":[[5,1,1,1]]}'
    await hub.send_all(frame)
    framed = b"\x81" + bytes([len(frame)]) + frame.encode()
    assert fast.wire.transport.socket.sent == [framed]
    assert fast.wire.transport.written == []
    assert early.wire.transport.socket.sent == [] and early.delivered == [frame]
    assert queued.wire.transport.socket.sent == []
    assert queued.wire.transport.written == [framed]
    assert closing.wire.transport.socket.sent == []
    assert closing.wire.transport.written == []


async def test_a_socket_before_its_hello_gets_frames_through_its_backlog(hub):
    early = Listener()
    early.ready = False
    hub.join(early)
    await hub.send_all("frame")
    assert early.delivered == ["frame"] and early.wire.transport.written == []
