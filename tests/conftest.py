"""Shared fixtures: canvases, players, sessions and WebSocket clients."""

import json

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore

from . import services_available as svc

ORIGIN = (b"origin", b"http://127.0.0.1:8000")


def pytest_sessionstart(session) -> None:
    """The PostgreSQL pass of `make test` needs the server; say so plainly."""
    engine = django_settings.DATABASES["default"]["ENGINE"]
    if "postgresql" in engine and not svc._reachable(
        svc.POSTGRES_HOST, svc.POSTGRES_PORT
    ):
        message = (
            f"PostgreSQL is not reachable at {svc.POSTGRES_HOST}:{svc.POSTGRES_PORT}"
        )
        if svc.in_ci():
            pytest.exit(f"{message}; CI must provide it", returncode=1)
        pytest.exit(f"{message}; skipping the PostgreSQL pass", returncode=0)


@pytest.fixture
def make_canvas(db):
    from canvas import services

    def make(
        slug: str = "test", width: int = 32, height: int = 16, cooldown: int = 300
    ):
        canvas, _ = services.canvas_create_or_update(
            slug=slug, width=width, height=height, cooldown_seconds=cooldown
        )
        return canvas

    return make


@pytest.fixture
def anonymous_play(settings):
    settings.PLACE_REQUIRE_LOGIN = False
    return settings


def session_key_create(**data) -> str:
    store = SessionStore()
    for key, value in data.items():
        store[key] = value
    store.save()
    return store.session_key


def login_session_key(username: str = "alice") -> str:
    """A session in which `username` is logged in, as Django's login() would make."""
    user = get_user_model().objects.create_user(
        username=username, password="pw-123456!"
    )
    return session_key_create(
        _auth_user_id=str(user.pk),
        _auth_user_backend="django.contrib.auth.backends.ModelBackend",
        _auth_user_hash=user.get_session_auth_hash(),
    )


class PeerCommunicator(WebsocketCommunicator):
    """A WebsocketCommunicator whose scope names the peer address, as daphne's does."""

    def __init__(self, application, path, headers, client):
        from asgiref.testing import ApplicationCommunicator

        self.scope = {
            "type": "websocket",
            "path": path,
            "query_string": b"",
            "headers": headers,
            "subprotocols": [],
            "client": client,
        }
        ApplicationCommunicator.__init__(self, application, self.scope)
        self.response_headers = None


def communicator(
    slug: str,
    *,
    session_key: str | None = None,
    headers=None,
    client: tuple[str, int] = ("127.0.0.1", 50000),
):
    from placeproject.asgi import application

    all_headers = list(headers) if headers is not None else [ORIGIN]
    if session_key:
        all_headers.append((b"cookie", f"sessionid={session_key}".encode()))
    return PeerCommunicator(application, f"/ws/canvases/{slug}/", all_headers, client)


async def connect(slug: str, **kwargs) -> tuple[WebsocketCommunicator, dict]:
    """Open a socket and return it with its `hello`."""
    client = communicator(slug, **kwargs)
    connected, _ = await client.connect(timeout=5)
    assert connected
    hello = json.loads(await client.receive_from(timeout=5))
    assert hello["type"] == "hello"
    return client, hello


async def receive_type(client, kind: str, timeout: float = 5) -> dict:
    """The next message of type `kind`, skipping others (online counts, ...)."""
    while True:
        message = json.loads(await client.receive_from(timeout=timeout))
        if message["type"] == kind:
            return message


async def send(client, message) -> None:
    text = message if isinstance(message, str) else json.dumps(message)
    await client.send_to(text_data=text)


@pytest.fixture(autouse=True)
def clear_cache():
    """Attempt counters live in the cache; each test starts with none."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
async def fresh_layer():
    """Each test gets an empty in-memory layer (hubs of earlier tests are gone)."""
    layer = get_channel_layer()
    if hasattr(layer, "flush"):
        await layer.flush()
    yield layer


adb = database_sync_to_async


@pytest.fixture(scope="session", autouse=True)
def database_threads_finish(django_db_setup):
    """The threads that write sockets' rows hand their pooled connections
    back before the test database is dropped."""
    yield
    from asgiref.sync import SyncToAsync
    from django import db

    from canvas import presence

    presence.shutdown()
    db.connections.close_all()
    # channels' test communicators swap `close_old_connections` for a no-op
    # while they send or receive (channels/testing/application.py), and the
    # patch is process-wide: a database_sync_to_async call that ran meanwhile
    # left its connection checked out on asgiref's thread. daphne has no such
    # patch, so this is the tests' own leak; give it back here.
    SyncToAsync.single_thread_executor.submit(db.connections.close_all).result()
    _pooled_connections_returned(db.connections["default"])


def _pooled_connections_returned(connection, wait: float = 5.0) -> None:
    """Wait for threads to give back their pooled connections, and say which
    threads were alive if some never came back: PostgreSQL will not drop the
    test database while a session is open on it ("being accessed by other
    users"), and the warning alone does not say whose session it was."""
    import threading
    import time
    import warnings

    if connection.vendor != "postgresql" or not connection.settings_dict["OPTIONS"].get(
        "pool"
    ):
        return
    pool = connection.pool
    deadline = time.monotonic() + wait
    while (out := _checked_out(pool)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if out:
        names = sorted(thread.name for thread in threading.enumerate())
        warnings.warn(
            f"{out} pooled connection(s) still checked out at the end of the"
            f" session; threads alive: {', '.join(names)}; open connections"
            f" (thread, in atomic, backend pid): {_open_wrappers()}; the"
            f" database's other sessions: {_other_sessions(connection)}",
            stacklevel=1,
        )


def _open_wrappers() -> list[tuple]:
    """Every Django connection object still holding a database connection,
    by the thread it belongs to ("gone" if that thread has ended)."""
    import gc
    import threading

    from django.db.backends.base.base import BaseDatabaseWrapper

    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return [
        (
            names.get(wrapper._thread_ident, "gone"),
            wrapper.in_atomic_block,
            wrapper.connection.info.backend_pid,
        )
        for wrapper in gc.get_objects()
        if isinstance(wrapper, BaseDatabaseWrapper) and wrapper.connection is not None
    ]


def _other_sessions(connection) -> list[tuple]:
    """The test database's other sessions as PostgreSQL sees them: state, when
    it last changed and the last statement, which names the code that ran it."""
    import psycopg

    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as own:
        return own.execute(
            "SELECT pid, state, now() - state_change, left(query, 300)"
            " FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()


def _checked_out(pool) -> int:
    stats = pool.get_stats()
    return stats["pool_size"] - stats["pool_available"]
