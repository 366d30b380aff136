"""Things to break on purpose: a private Redis server, a TCP proxy to cut, and
a local port to blackhole."""

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from . import services_available as svc
from .live import free_port


def require_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary:
        return binary
    if svc.in_ci():
        pytest.fail("redis-server is not installed; CI must provide it", pytrace=False)
    pytest.skip("redis-server is not installed; install it to run fault tests")


class RedisServer:
    """A throwaway redis-server on its own port, which a test may kill."""

    def __init__(self, tmp: Path) -> None:
        self.binary = require_redis_server()
        self.port = free_port()
        self.tmp = tmp
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class TcpProxy:
    """Forwards a local port to a target; `cut()` refuses and drops everything."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Stop listening and reset every open connection: the server is 'gone'."""
        if self.listener:
            with contextlib.suppress(OSError):
                self.listener.shutdown(socket.SHUT_RDWR)
            self.listener.close()
            self.listener = None
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.update({client, upstream})
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()


def require_iptables() -> str:
    """iptables, usable here (root, a kernel with netfilter), else skip (fail on CI)."""
    binary = shutil.which("iptables")
    usable = (
        binary is not None
        and os.geteuid() == 0
        and subprocess.run(
            [binary, "-L", "OUTPUT", "-n"], capture_output=True
        ).returncode
        == 0
    )
    if usable:
        return binary
    message = "iptables is not usable here (needs root and the iptables package)"
    if svc.in_ci():
        pytest.fail(f"{message}; CI must provide it", pytrace=False)
    pytest.skip(f"{message}; install it to run the blackhole test")


@contextlib.contextmanager
def blackholed(port: int):
    """Drop every packet to and from a local port, with no reset and no
    refusal: what a peer sees when a host loses power or the network splits."""
    iptables = require_iptables()
    rules = [["-p", "tcp", "--dport", str(port)], ["-p", "tcp", "--sport", str(port)]]
    for rule in rules:
        subprocess.run([iptables, "-I", "OUTPUT", *rule, "-j", "DROP"], check=True)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run([iptables, "-D", "OUTPUT", *rule, "-j", "DROP"])
