"""Writing straight to daphne's sockets: one pre-framed message, no ASGI hop.

Daphne hands each application `send=partial(server.handle_reply, protocol)`.
The hub (every broadcast) and the consumer (its own replies) write text frames
directly to that autobahn protocol: framed once by autobahn's PreparedMessage,
then handed to the kernel, skipping the ASGI hop, per-socket framing and
twisted's write scheduling (two epoll_ctl calls and a loop turn per frame).
"""

import functools

from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol


def daphne_socket(listener: object) -> WebSocketProtocol | None:
    """The autobahn protocol behind a consumer served by daphne, else None.

    Anything else (tests' communicators, another server) goes through ASGI.
    """
    send = getattr(listener, "base_send", None)
    if isinstance(send, functools.partial) and send.args:
        wire = send.args[0]
        if isinstance(wire, WebSocketProtocol):
            return wire
    return None


def write(wire: WebSocketProtocol, prepared: PreparedMessage, limit: int) -> bool:
    """Queue the frame on the socket; False if its unsent bytes exceed `limit`."""
    if wire.state != WebSocketProtocol.STATE_OPEN:
        return True
    transport = wire.transport
    unsent = _unsent(transport)
    if limit and unsent > limit:
        return False
    if wire.send_queue:
        wire.sendPreparedMessage(prepared)
    else:
        _send(transport, prepared.payloadHybi, unsent)
    return True


Road = tuple[WebSocketProtocol, object, object]  # (wire, transport, kernel socket)


def road(wire: WebSocketProtocol | None) -> Road | None:
    """What `send_ready` needs of a socket, looked up once (at join): None
    where there is no plain TCP socket beneath (TLS, or not daphne's)."""
    if wire is None or wire.transport is None:
        return None
    raw = _plain_socket(wire.transport)
    return None if raw is None else (wire, wire.transport, raw)


def send_ready(road: Road, data: bytes) -> bool:
    """`write` for the common case, a broadcast to an open socket with nothing
    queued, in as few steps as it takes; False (nothing done) otherwise.

    The hub calls this once per socket per frame: at 5,000 sockets its steps
    (four calls, defaulted lookups) were a fifth of a frame's write time on
    top of the kernel's `send` (bench/RESULTS.md, fan-out).
    """
    wire, transport, raw = road
    if (
        wire.state != WebSocketProtocol.STATE_OPEN
        or wire.send_queue
        or transport.dataBuffer  # twisted empties it once all is written
        or transport._tempDataLen
    ):
        return False
    _to_kernel(raw, transport, data)
    return True


def send_bytes(wire: WebSocketProtocol, data: bytes) -> None:
    """Autobahn's own frames (keepalive pings, closes) by the same short road."""
    _send(wire.transport, data, _unsent(wire.transport))


def _unsent(transport) -> int:
    buffered = len(getattr(transport, "dataBuffer", b""))
    unsent = buffered - getattr(transport, "offset", 0)
    return unsent + getattr(transport, "_tempDataLen", 0)


def _plain_socket(transport):
    """The kernel socket of a plain TCP transport, else None.

    Looked up in the transport's own attributes: twisted's TLS transport
    forwards unknown attributes to the TCP transport beneath it, whose socket
    would take the bytes unencrypted.
    """
    attributes = getattr(transport, "__dict__", {})
    if attributes.get("TLS"):  # a TCP connection that started TLS itself
        return None
    return attributes.get("socket")


def _send(transport, data: bytes, unsent: int) -> None:
    raw = _plain_socket(transport)
    if unsent or raw is None:
        # Behind bytes already queued (order), or not plain TCP: twisted's way.
        transport.write(data)
        return
    _to_kernel(raw, transport, data)


def _to_kernel(raw, transport, data: bytes) -> None:
    """With nothing queued: the kernel first. Most frames go out whole and
    skip twisted's buffer, its two epoll_ctl calls and a loop iteration; what
    the kernel does not take waits in twisted's buffer, in order."""
    try:
        sent = raw.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:  # the connection is going; twisted will notice
        return
    if sent < len(data):
        transport.write(data[sent:])


def abort_if_open(wire: WebSocketProtocol) -> None:
    transport = wire.transport
    if transport is not None and wire.state != WebSocketProtocol.STATE_CLOSED:
        transport.abortConnection()


def send_text(wire: WebSocketProtocol, text: str) -> None:
    """One text frame to one socket, in order with everything sent before it."""
    write(wire, PreparedMessage(text.encode(), False, False, True), limit=0)
