"""The production server: daphne, with per-socket upkeep paid per event, not per second.

    python -m placeproject.server [daphne's flags] placeproject.asgi:application

runs daphne's own command line with `PlaceServer`. Plain `daphne` serves the
same application; this class only makes idle sockets cheaper (bench/RESULTS.md,
idle), keeping daphne's rules and their timing:

- Daphne looks at every connection every second (finished applications, closed
  sockets) and again every two seconds (timeouts, keepalive pings). With 10,000
  idle sockets those scans were most of an idle process's CPU. Here a
  connection is looked at when something happened to it (its application
  finished, it closed) or when its next timeout falls due (a heap by time).
- Each connection's input queue is an `Inbox`, not an `asyncio.Queue` (four
  deques: about 3 KB per idle socket).
- An HTTP connection upgraded to a WebSocket leaves its spent request (headers,
  session cookie) on twisted's channel for the socket's life; it is released.
  Once a WebSocket is accepted, autobahn's copy of the handshake goes too.
- One connection whose check raises no longer stops the checks of all others.

Written against daphne 4.2 (pinned in requirements.txt); tests/test_server.py
checks each of daphne's rules still holds.
"""

import asyncio
import heapq
import itertools
import logging
import time
import weakref
from collections import deque
from functools import partial

from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketProtocol
from twisted.internet import reactor

from canvas import sockets
from canvas.protocol import CLOSE_TOO_LARGE

logger = logging.getLogger("daphne.server")

# Daphne's own periods: reap finished applications every second, check
# timeouts every two.
REAP_SECONDS = 1.0
TIMEOUT_SECONDS = 2.0
# How long a closed socket may take to hand its last bytes to a slow reader.
LINGER_SECONDS = 10.0
# How long a WebSocket handshake may take before daphne drops it (daphne: 5).
HANDSHAKE_SECONDS = 30
# Connections the kernel may queue for accept() (twisted's default: 50). Every
# client of a restarted process reconnects at once; past the queue their
# connections are dropped and retried after 1, 3, 7, 15 s (SYN backoff).
LISTEN_BACKLOG = 2048


class Inbox:
    """One connection's incoming ASGI events: `asyncio.Queue`'s two used methods."""

    __slots__ = ("items", "waiters")

    def __init__(self) -> None:
        self.items: deque | None = None  # only while events wait
        self.waiters: list[asyncio.Future] | None = None  # only while gets wait

    def put_nowait(self, item: dict) -> None:
        if self.items is None:
            self.items = deque()
        self.items.append(item)
        self._wake_one()

    async def get(self) -> dict:
        while not self.items:
            waiter = asyncio.get_running_loop().create_future()
            if self.waiters is None:
                self.waiters = []
            self.waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                self._wake_one()  # a wake-up this get took goes to the next one
                raise
            finally:
                if self.waiters is not None and waiter in self.waiters:
                    self.waiters.remove(waiter)
                    if not self.waiters:
                        self.waiters = None
        item = self.items.popleft()
        if not self.items:
            self.items = None
        return item

    def _wake_one(self) -> None:
        if self.items and self.waiters:
            for waiter in self.waiters:
                if not waiter.done():
                    waiter.set_result(None)
                    return


class PlaceWebSocketProtocol(WebSocketProtocol):
    def sendData(
        self, data: bytes, sync: bool = False, chopsize: int | None = None
    ) -> None:
        """Autobahn's own frames (a keepalive ping every minute per socket, the
        handshake, closes) straight to the kernel when nothing is queued, as
        the hub's broadcasts go (canvas/sockets.py): twisted's write
        scheduling was a fifth of an idle process's CPU."""
        if sync or chopsize or self.send_queue or self.transport is None:
            super().sendData(data, sync, chopsize)
            return
        sockets.send_bytes(self, data)

    def processData(self) -> bool:
        """A whole small text frame (every placement is one) in a few steps;
        anything else, or anything doubtful, by autobahn's general parser.

        Autobahn builds a masker object, a frame header, a UTF-8 validator run,
        per-frame and per-message lists and an observer callback for every
        frame: a fifth of a server's event loop under 7,000 placements/s
        (bench/RESULTS.md). This does what those steps amount to for a frame
        that is final, unfragmented, uncompressed, masked and under 126 bytes:
        the same counters, the keepalive restart, the same onMessage call.
        """
        data = self.data
        if (
            len(data) < 6
            or data[0] != 0x81  # FIN, no RSV bits, text
            or not data[1] & 0x80  # masked, as a client's frames must be
            or (length := data[1] & 0x7F) > 125
            or len(data) < 6 + length
            or self.current_frame is not None
            or self.inside_message
            or self.state != WebSocketProtocol.STATE_OPEN
            or self.failedByMe
            or self._perMessageCompress is not None
            or self.logFrames
            or self.trackedTimings
            or self._listeners
            or not self.applyMask
            or 0 < self.maxFramePayloadSize < length
            or 0 < self.maxMessagePayloadSize < length
        ):
            return super().processData()
        payload = _unmask(data[2:6], data[6 : 6 + length])
        if self.utf8validateIncoming:
            try:
                payload.decode()
            except UnicodeDecodeError:
                # Autobahn's parser fails the connection with 1007, as always.
                return super().processData()
        self.data = data[6 + length :]
        stats = self.trafficStats
        stats.incomingOctetsWebSocketLevel += length
        stats.incomingOctetsAppLevel += length
        stats.incomingWebSocketFrames += 1
        stats.incomingWebSocketMessages += 1
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            self._cancelAutoPingTimeoutCall()
        self._onMessage(payload, False)
        return len(self.data) > 0

    def _fail_connection(self, code: int = 1001, reason: str = "going away") -> None:
        if code == WebSocketProtocol.CLOSE_STATUS_CODE_MESSAGE_TOO_BIG:
            # Past daphne's 1 MiB limit autobahn refuses a frame on its header,
            # before the application sees it: the contract's code for a frame
            # over 16 KiB all the same.
            code, reason = CLOSE_TOO_LARGE, "frame over 16 KiB"
        super()._fail_connection(code, reason)

    def _closeConnection(self, abort: bool = False) -> None:
        super()._closeConnection(abort)
        if not abort:
            # A graceful close waits until the peer has taken what is still
            # buffered; a peer that never reads would keep the socket (and up
            # to PLACE_SLOW_CLIENT_BYTES of frames) for as long as it likes.
            reactor.callLater(LINGER_SECONDS, _abort_if_connected, self.transport)


def _unmask(mask: bytes, masked: bytes) -> bytes:
    """XOR a short payload with its 4-byte mask, as one big integer."""
    length = len(masked)
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(masked) ^ int.from_bytes(key)).to_bytes(length)


def _abort_if_connected(transport) -> None:
    if transport is not None and transport.connected:
        transport.abortConnection()


class PlaceServer(Server):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Connections whose application finished or which closed: the only
        # ones the once-a-second reaper has anything to do for.
        self.attention: set = set()
        # (when, n, weakref to protocol): each connection's next timeout check.
        self.due: list = []
        self.due_order = itertools.count()

    def run(self) -> None:
        _refuse_an_unmigrated_database()
        _sweep_dead_predecessors()
        self.endpoints = [_with_backlog(e) for e in self.endpoints]
        if self.verbosity <= 1:
            _skip_autobahn_debug_formatting()
        super().run()

    def listen_success(self, port) -> None:
        # Autobahn fails a bad frame (invalid UTF-8, a protocol error) by
        # dropping the TCP connection; send the close code (1007, 1002) first,
        # so the client learns why, and cut off every graceful close that
        # lingers (PlaceWebSocketProtocol). The factory exists once we listen.
        # (allowNullOrigin again: unlike the others it is reset when left out;
        # daphne lets `Origin: null` through for the application to refuse.)
        self.ws_factory.setProtocolOptions(failByDrop=False, allowNullOrigin=True)
        self.ws_factory.protocol = PlaceWebSocketProtocol
        super().listen_success(port)

    def kill_all_applications(self):
        # Stopping: every socket's row is left to the next start's sweep (one
        # statement) instead of a delete per socket while daphne waits for
        # every task (seconds at 10,000 sockets).
        from canvas.hub import registry

        registry.closing = True
        return super().kill_all_applications()

    # -- connections come and go

    def protocol_connected(self, protocol) -> None:
        super().protocol_connected(protocol)
        self._check_later(protocol, time.time() + TIMEOUT_SECONDS)

    def protocol_disconnected(self, protocol) -> None:
        super().protocol_disconnected(protocol)
        self.attention.add(protocol)
        if getattr(protocol, "transport", True) is None:
            # An HTTP request whose connection daphne handed to a WebSocket: its
            # channel stays on the transport and would keep the spent request
            # (headers, session cookie included) for the socket's whole life.
            # The channel reads no more data, so nothing needs it there.
            requests = getattr(getattr(protocol, "channel", None), "requests", None)
            if requests is not None and protocol in requests:
                requests.remove(protocol)

    def create_application(self, protocol, scope):
        """Daphne's, with an Inbox and a note when the application ends."""
        assert "application_instance" not in self.connections[protocol]
        inbox = Inbox()
        scope.setdefault("asgi", {"version": "3.0"})
        application_instance = self.application(
            scope=scope,
            receive=inbox.get,
            send=partial(self.handle_reply, protocol),
        )
        if protocol not in self.connections:
            return None
        task = asyncio.ensure_future(application_instance)
        task.add_done_callback(partial(_note_done, self.attention, protocol))
        self.connections[protocol]["application_instance"] = task
        return inbox

    async def handle_reply(self, protocol, message: dict) -> None:
        await super().handle_reply(protocol, message)
        if (
            message.get("type") == "websocket.accept"
            and isinstance(protocol, WebSocketProtocol)
            and protocol.state == protocol.STATE_OPEN
        ):
            # The handshake is done (twisted ran it within the accept): what
            # only it needed would otherwise stay for the socket's whole life.
            headers = getattr(protocol, "http_headers", None)
            if isinstance(headers, dict):
                headers.clear()  # the ConnectionRequest shares this dict
            protocol.http_request_data = b""

    # -- the two periodic jobs, now proportional to what happened

    def application_checker(self) -> None:
        # One connection's failure must not stop the checks of all the others
        # (daphne's loop would stop for good), so each is guarded.
        try:
            for protocol in list(self.attention):
                details = self.connections.get(protocol)
                if details is not None:
                    try:
                        self._reap(protocol, details)
                    except Exception:
                        logger.exception("reaping %r failed", protocol)
                    details = self.connections.get(protocol)
                if details is None or "disconnected" not in details:
                    # Gone, or open with its application reaped or still
                    # running (a finished application puts it back here).
                    self.attention.discard(protocol)
        finally:
            reactor.callLater(REAP_SECONDS, self.application_checker)

    def timeout_checker(self) -> None:
        try:
            now = time.time()
            due = self.due
            while due and due[0][0] <= now:
                _, _, ref = heapq.heappop(due)
                protocol = ref()
                if protocol is None or protocol not in self.connections:
                    continue
                try:
                    protocol.check_timeouts()
                except Exception:
                    logger.exception("timeout check of %r failed", protocol)
                finally:
                    if protocol in self.connections:
                        self._check_later(protocol, self._next_check(protocol, now))
        finally:
            reactor.callLater(TIMEOUT_SECONDS, self.timeout_checker)

    def _check_later(self, protocol, when: float) -> None:
        entry = (when, next(self.due_order), weakref.ref(protocol))
        heapq.heappush(self.due, entry)

    def _next_check(self, protocol, now: float) -> float:
        """When check_timeouts could next do something for this connection."""
        soonest = now + TIMEOUT_SECONDS
        if (
            isinstance(protocol, WebSocketProtocol)
            and protocol.state == protocol.STATE_OPEN
        ):
            # Open WebSockets: only the keepalive ping and the maximum age
            # apply. Anything else (handshakes, HTTP) keeps daphne's 2 s.
            when = protocol.last_ping + self.ping_interval
            if self.websocket_timeout >= 0:
                when = min(when, protocol.socket_opened + self.websocket_timeout)
            return max(when, soonest)
        return soonest

    def _reap(self, protocol, details: dict) -> None:
        """Daphne 4.2's per-connection rules from `Server.application_checker`."""
        disconnected = details.get("disconnected", None)
        application_instance = details.get("application_instance", None)
        # An application that outlives its socket by the close timeout is killed.
        if disconnected and time.time() - disconnected > self.application_close_timeout:
            if application_instance and not application_instance.done():
                logger.warning(
                    "Application instance %r for connection %s took too long to "
                    "shut down and was killed.",
                    application_instance,
                    repr(protocol),
                )
                application_instance.cancel()
        # A finished application is reaped; its exception, if any, logged.
        if application_instance and application_instance.done():
            try:
                exception = application_instance.exception()
            except asyncio.CancelledError:
                pass
            else:
                if exception:
                    if isinstance(exception, KeyboardInterrupt):
                        self.stop()
                    else:
                        logger.error(
                            "Exception inside application: %s",
                            exception,
                            exc_info=exception,
                        )
                        if not disconnected:
                            protocol.handle_exception(exception)
            del details["application_instance"]
            application_instance = None
        # Closed with no application left: forget the connection.
        if not application_instance and disconnected:
            del self.connections[protocol]


def _note_done(attention: set, protocol, _task) -> None:
    attention.add(protocol)


def _with_backlog(endpoint: str) -> str:
    """A TCP or UNIX endpoint description with LISTEN_BACKLOG, unless it says."""
    kind = endpoint.split(":", 1)[0]
    if kind in {"tcp", "tcp6", "unix"} and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={LISTEN_BACKLOG}"
    return endpoint


def _refuse_an_unmigrated_database() -> None:
    """Stop with a clear line rather than serve 500s from missing tables (a
    deploy that ran `migrate` without the workers' DATABASE_URL, say). A
    database that cannot be reached yet is not a reason to stop: the process
    answers 503 until it is back."""
    from django.db import DatabaseError, connection
    from django.db.migrations.executor import MigrationExecutor

    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as error:
        logger.warning("could not check the database's migrations: %s", error)
        return
    finally:
        connection.close()
    if plan:
        logger.critical(
            "%d migration(s) not applied to %s: run `python manage.py migrate`"
            " with this environment first",
            len(plan),
            connection.settings_dict.get("NAME"),
        )
        raise SystemExit(1)


def _sweep_dead_predecessors() -> None:
    """Drop the rows of this host's dead processes (a worker killed and
    restarted) before serving, so online counts are right from the start rather
    than from this process's first socket. Best effort: a database that cannot
    be reached leaves them to the first heartbeat or the stale-row sweep."""
    from django.db import DatabaseError, connection

    from canvas.hub import sweep_dead_local_servers

    try:
        sweep_dead_local_servers()
    except DatabaseError as error:
        logger.warning("could not sweep dead processes' sockets: %s", error)
    finally:
        connection.close()


def _skip_autobahn_debug_formatting() -> None:
    """Autobahn pretty-prints its whole configuration for a debug line on every
    new connection, whether or not anything logs it: a fifth of the event
    loop's time in a storm of handshakes. At verbosity 1 or less daphne sends
    twisted's log (where that line goes) nowhere, so it is not formatted."""
    import autobahn.websocket.protocol as autobahn_protocol

    autobahn_protocol.pformat = _unformatted


def _unformatted(value: object, *args, **kwargs) -> str:
    return "(not formatted: daphne discards twisted's log at this verbosity)"


class PlaceCommandLine(CommandLineInterface):
    server_class = PlaceServer

    def __init__(self) -> None:
        super().__init__()
        # Daphne's 5 s for a handshake is shorter than a storm takes to clear
        # (every client of a restarted process reconnecting at once): a
        # handshake dropped at 5 s has already cost its database work, and
        # its client comes back to cost it again.
        self.parser.set_defaults(websocket_connect_timeout=HANDSHAKE_SECONDS)


if __name__ == "__main__":
    PlaceCommandLine.entrypoint()
