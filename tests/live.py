"""Real daphne processes for tests: a database, optional Redis, N servers."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import services_available as svc

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@dataclass
class Stack:
    env: dict
    tmp: Path
    servers: list[Server] = field(default_factory=list)
    cleanups: list = field(default_factory=list)
    # The production launcher (docs/deploy.md); "daphne" runs plain daphne.
    server_module: str = "placeproject.server"

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def start_server(self, port: int | None = None, *flags: str) -> Server:
        port = port or free_port()
        log = self.tmp / f"daphne-{port}-{len(self.servers)}.log"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.server_module,
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                *flags,
                "placeproject.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        server = Server(port=port, process=process, log=log)
        self.servers.append(server)
        wait_ready(server)
        return server

    def kill(self, server: Server, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            server.process.send_signal(sig)
        server.process.wait(timeout=20)

    def stop(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                server.process.terminate()
        for server in self.servers:
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()


def wait_ready(server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"daphne exited early:\n{server.log.read_text()}")
        try:
            with urllib.request.urlopen(server.url + "/api/canvases/main/", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"daphne did not start:\n{server.log.read_text()}")


def postgres_database(stack: Stack) -> str:
    """A fresh, empty PostgreSQL database, dropped when the stack stops."""
    import psycopg

    name = "place_live_" + uuid.uuid4().hex[:10]
    with psycopg.connect(svc.POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(svc.POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.cleanups.append(drop)
    return f"postgres://postgres@{svc.POSTGRES_HOST}:{svc.POSTGRES_PORT}/{name}"


def make_stack(
    tmp: Path,
    *,
    database: str = "sqlite",
    redis: bool = False,
    servers: int = 1,
    env: dict | None = None,
    redis_url: str | None = None,
    postgres_port: int | None = None,
    server_module: str = "placeproject.server",
) -> Stack:
    """Migrate a fresh database and start `servers` daphne processes on it.

    `redis_url` points the servers at a private Redis; `postgres_port` makes
    them reach PostgreSQL through another port (a proxy a test can cut).
    """
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PLACE_", "DJANGO_", "DATABASE_URL", "REDIS_URL"))
    }
    base.update(
        {
            "DJANGO_SETTINGS_MODULE": "placeproject.settings",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PLACE_REQUIRE_LOGIN": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    stack = Stack(env=base, tmp=tmp, server_module=server_module)
    try:
        if database == "postgres":
            svc.require_postgres()
            url = postgres_database(stack)
            if postgres_port:
                url = url.replace(f":{svc.POSTGRES_PORT}/", f":{postgres_port}/")
            base["DATABASE_URL"] = url
        else:
            base["DATABASE_URL"] = f"sqlite:///{tmp / 'live.sqlite3'}"
        if redis_url:
            base["REDIS_URL"] = redis_url
        elif redis:
            svc.require_redis()
            base["REDIS_URL"] = svc.REDIS_URL
            _redis_flush()
        base.update(env or {})
        stack.manage("migrate", "--noinput")
        for _ in range(servers):
            stack.start_server()
    except BaseException:
        stack.stop()
        raise
    return stack


def _redis_flush() -> None:
    import redis

    redis.Redis.from_url(svc.REDIS_URL).flushdb()
