"""Direct writes to daphne's sockets (canvas/sockets.py), as replies use them."""

from autobahn.websocket.protocol import WebSocketProtocol

from canvas import sockets

from .test_fanout import FakeSocket, Listener


def test_a_reply_is_one_text_frame_handed_to_the_kernel():
    listener = Listener()
    listener.wire.transport.socket = FakeSocket(accepts=10_000)
    wire = sockets.daphne_socket(listener)
    assert wire is listener.wire
    sockets.send_text(wire, '{"type":"accepted","seq":7}')
    sent = listener.wire.transport.socket.sent
    assert sent == [b"\x81\x1b" + b'{"type":"accepted","seq":7}']


def test_a_reply_queues_behind_bytes_the_socket_has_not_taken_yet():
    listener = Listener(unsent=100)  # an earlier frame still in twisted's buffer
    listener.wire.transport.socket = FakeSocket(accepts=10_000)
    sockets.send_text(listener.wire, "later")
    assert listener.wire.transport.socket.sent == []
    assert listener.wire.transport.written == [b"\x81\x05later"]


def test_a_closing_socket_gets_nothing_and_others_fall_back_to_asgi():
    listener = Listener()
    listener.wire.transport.socket = FakeSocket(accepts=10_000)
    listener.wire.state = WebSocketProtocol.STATE_CLOSING
    sockets.send_text(listener.wire, "late")
    assert listener.wire.transport.socket.sent == []
    assert listener.wire.transport.written == []

    class NotDaphne:
        async def base_send(self, message):
            pass

    assert sockets.daphne_socket(NotDaphne()) is None


def test_a_tls_transport_is_written_through_twisted_never_to_its_socket():
    """Twisted's TLS transport forwards attribute lookups to the TCP transport
    beneath it: the raw socket must not be used, or bytes go out unencrypted."""
    from .test_fanout import FakeTransport

    beneath = FakeTransport()
    beneath.socket = FakeSocket(accepts=10_000)

    class TLSLike:
        def __init__(self):
            self.written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

        def __getattr__(self, name):
            return getattr(beneath, name)

    listener = Listener()
    listener.wire.transport = TLSLike()
    sockets.send_text(listener.wire, "secret")
    assert beneath.socket.sent == []
    assert listener.wire.transport.written == [b"\x81\x06secret"]


def test_the_broadcast_road_sends_only_to_an_open_socket_with_nothing_queued():
    """send_ready: the hub's per-socket step. It hands the frame to the kernel
    (the rest, if the kernel takes part, to twisted's buffer) or does nothing
    and says so, for the general path to decide (queue, close, skip)."""
    frame = b"\x81\x05hello"
    whole, part = Listener(), Listener()
    whole.wire.transport.socket = FakeSocket(accepts=10_000)
    part.wire.transport.socket = FakeSocket(accepts=3)
    assert sockets.send_ready(sockets.road(whole.wire), frame)
    assert whole.wire.transport.socket.sent == [frame]
    assert whole.wire.transport.written == []
    assert sockets.send_ready(sockets.road(part.wire), frame)
    assert part.wire.transport.socket.sent == [frame[:3]]
    assert part.wire.transport.written == [frame[3:]]

    queued, pending, closing = Listener(unsent=10), Listener(), Listener()
    pending.wire.send_queue = [object()]  # autobahn's own queue (a chopped frame)
    closing.wire.state = WebSocketProtocol.STATE_CLOSING
    for other in (queued, pending, closing):
        other.wire.transport.socket = FakeSocket(accepts=10_000)
        assert not sockets.send_ready(sockets.road(other.wire), frame)
        assert other.wire.transport.socket.sent == []
        assert other.wire.transport.written == []


def test_no_road_without_a_plain_socket_beneath():
    from .test_fanout import FakeTransport

    tls = Listener()
    tls.wire.transport = FakeTransport()
    tls.wire.transport.socket = FakeSocket(accepts=10_000)
    tls.wire.transport.TLS = True  # a TCP connection that started TLS itself
    assert sockets.road(tls.wire) is None
    assert sockets.road(Listener().wire) is None  # no socket attribute at all
    assert sockets.road(None) is None
