"""The WebSocket endpoint through the full ASGI stack (origin check, sessions)."""

import asyncio
import json
import threading
import time

import pytest

from canvas import exceptions as exc
from canvas.models import Connection, Placement, Player

from .conftest import (
    adb,
    communicator,
    connect,
    login_session_key,
    receive_type,
    send,
    session_key_create,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_layer"),
]


@pytest.fixture
def canvas(make_canvas):
    return make_canvas(slug="test", width=32, height=16, cooldown=300)


@pytest.fixture
def player_session(anonymous_play):
    return session_key_create(seen=True)


async def test_hello_then_place_is_accepted_and_broadcast_to_everyone(
    canvas, player_session
):
    placer, hello = await connect("test", session_key=player_session)
    watcher, watcher_hello = await connect("test")
    assert hello["seq"] == 0 and hello["can_place"] is True
    assert hello["user"].startswith("anon-")
    assert hello["cooldown_seconds"] == 300 and hello["cooldown_remaining"] == 0
    assert watcher_hello["user"] is None and watcher_hello["can_place"] is False

    await send(placer, {"type": "place", "x": 3, "y": 4, "color": 5})
    # The placer's answer and its own change in the stream, in either order.
    got = {}
    while len(got) < 2:
        message = json.loads(await placer.receive_from(timeout=5))
        if message["type"] in ("accepted", "pixels"):
            got.setdefault(message["type"], message)
    accepted = got["accepted"]
    assert accepted == {
        "type": "accepted",
        "x": 3,
        "y": 4,
        "color": 5,
        "seq": 1,
        "cooldown_remaining": 300.0,
    }
    assert await adb(Placement.objects.filter(seq=1, x=3, y=4, color=5).exists)()
    assert (await receive_type(watcher, "pixels"))["updates"] == [[1, 3, 4, 5]]
    # The placer sees its own placement in the stream too.
    assert got["pixels"]["updates"] == [[1, 3, 4, 5]]
    await placer.disconnect()
    await watcher.disconnect()


async def test_second_placement_gets_cooldown_with_retry_after(canvas, player_session):
    client, _ = await connect("test", session_key=player_session)
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 1})
    await receive_type(client, "accepted")
    await send(client, {"type": "place", "x": 2, "y": 1, "color": 1})
    rejected = await receive_type(client, "rejected")
    assert rejected["code"] == "cooldown"
    assert rejected["message"] == exc.MSG_COOLDOWN
    assert 295 < rejected["retry_after"] <= 300
    # A reconnect reports the remaining cooldown in hello.
    await client.disconnect()
    again, hello = await connect("test", session_key=player_session)
    assert 295 < hello["cooldown_remaining"] <= 300
    await again.disconnect()


@pytest.mark.parametrize(
    "message, code",
    [
        ({"type": "place", "x": 32, "y": 0, "color": 1}, "out_of_bounds"),
        ({"type": "place", "x": 0, "y": -1, "color": 1}, "out_of_bounds"),
        ({"type": "place", "x": 0, "y": 0, "color": 16}, "invalid_color"),
    ],
)
async def test_rejections_name_their_code(canvas, player_session, message, code):
    client, _ = await connect("test", session_key=player_session)
    await send(client, message)
    rejected = await receive_type(client, "rejected")
    assert rejected["code"] == code and rejected["retry_after"] is None
    assert not await adb(Placement.objects.exists)()
    await client.disconnect()


BAD_FRAMES = [
    "not json",
    "[1,2,3]",
    "null",
    '{"type":"place","x":1.5,"y":1,"color":1}',
    '{"type":"place","x":"1","y":1,"color":1}',
    '{"type":"place","x":true,"y":1,"color":1}',
    '{"type":"place","y":1,"color":1}',
    '{"type":"place","x":1,"y":1}',
    '{"type":"wipe"}',
    "{}",
]


@pytest.mark.parametrize("frame", BAD_FRAMES)
async def test_bad_input_gets_bad_request_writes_nothing_and_keeps_the_socket(
    canvas, player_session, frame
):
    client, _ = await connect("test", session_key=player_session)
    await send(client, frame)
    rejected = await receive_type(client, "rejected")
    assert rejected["code"] == "bad_request"
    assert not await adb(Placement.objects.exists)()
    # Still open and usable: a valid placement goes through afterwards.
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 2})
    assert (await receive_type(client, "accepted"))["seq"] == 1
    await client.disconnect()


async def test_binary_frame_is_a_bad_request(canvas, player_session):
    client, _ = await connect("test", session_key=player_session)
    await client.send_to(bytes_data=b"\x00\x01place")
    assert (await receive_type(client, "rejected"))["code"] == "bad_request"
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 2})
    assert (await receive_type(client, "accepted"))["seq"] == 1
    await client.disconnect()


async def test_frame_over_16_kib_closes_with_4009(canvas, player_session):
    client, _ = await connect("test", session_key=player_session)
    await send(client, json.dumps({"type": "place", "pad": "x" * 16400}))
    output = await client.receive_output(timeout=5)
    while output["type"] == "websocket.send":  # the online count, say
        output = await client.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": 4009}
    assert not await adb(Placement.objects.exists)()


async def test_frame_over_16_kib_closes_with_4009_even_when_rate_limited(
    canvas, player_session, settings
):
    settings.PLACE_MESSAGE_RATE = 2
    client, _ = await connect("test", session_key=player_session)
    for _ in range(2):  # the bucket is empty after these
        await send(client, {"type": "hello"})
    await send(client, json.dumps({"type": "place", "pad": "x" * 20000}))
    output = await client.receive_output(timeout=5)
    while output["type"] == "websocket.send":  # the two refusals, the count
        output = await client.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": 4009}


async def test_a_handshake_without_the_database_is_closed_with_4011(
    canvas, monkeypatch
):
    """Accepted, then closed with the documented code: a close before accept
    would reach the browser as a bare HTTP 403, as if it were refused."""
    from django.db import OperationalError

    from canvas import consumers

    def unreachable(*args, **kwargs):
        raise OperationalError("couldn't get a connection after 5.00 sec")

    monkeypatch.setattr(consumers, "_admit", unreachable)
    client = communicator("test")
    connected, _ = await client.connect(timeout=5)
    assert connected
    assert await client.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 4011,
    }
    assert await adb(Connection.objects.count)() == 0


async def test_frame_of_exactly_16_kib_is_still_read(canvas, player_session):
    client, _ = await connect("test", session_key=player_session)
    frame = json.dumps({"type": "place", "x": 1, "y": 1, "color": 2, "pad": ""})
    frame = frame.replace('"pad": ""', '"pad": "' + "x" * (16384 - len(frame)) + '"')
    assert len(frame) == 16384
    await send(client, frame)
    assert (await receive_type(client, "accepted"))["seq"] == 1
    await client.disconnect()


@pytest.mark.parametrize(
    "headers",
    [
        [(b"origin", b"http://evil.example")],
        [(b"origin", b"null")],
        [],
    ],
    ids=["foreign", "null", "missing"],
)
async def test_foreign_null_or_missing_origin_is_refused(canvas, headers):
    client = communicator("test", headers=headers)
    connected, _ = await client.connect(timeout=5)
    assert not connected
    assert not await adb(Connection.objects.exists)()


async def test_unknown_canvas_is_closed_with_4004_after_accept(canvas):
    """Accepted, then closed: a browser sees the code, not a bare HTTP 403."""
    client = communicator("nope")
    connected, _ = await client.connect(timeout=5)
    assert connected
    closing = await client.receive_output(timeout=5)
    assert (closing["type"], closing["code"]) == ("websocket.close", 4004)
    assert not await adb(Connection.objects.exists)()


async def test_socket_without_session_watches_but_cannot_place(canvas, anonymous_play):
    client, hello = await connect("test")
    assert hello["user"] is None and hello["can_place"] is False
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 1})
    assert (await receive_type(client, "rejected"))["code"] == "login_required"
    assert not await adb(Placement.objects.exists)()
    await client.disconnect()


async def test_login_required_mode_refuses_anonymous_sessions(canvas):
    key = await adb(session_key_create)(seen=True)
    client, hello = await connect("test", session_key=key)
    assert hello["can_place"] is False
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 1})
    rejected = await receive_type(client, "rejected")
    assert rejected["code"] == "login_required"
    assert rejected["message"] == exc.MSG_LOGIN_REQUIRED
    await client.disconnect()


async def test_logged_in_user_places_under_their_username(canvas):
    key = await adb(login_session_key)("alice")
    client, hello = await connect("test", session_key=key)
    assert hello["user"] == "alice" and hello["can_place"] is True
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 1})
    await receive_type(client, "accepted")
    assert await adb(Placement.objects.filter(player__name="alice").exists)()
    await client.disconnect()


async def test_banned_player_is_refused_on_an_open_socket(canvas):
    from django.utils import timezone

    from canvas.models import Player

    key = await adb(login_session_key)("mallory")
    client, _ = await connect("test", session_key=key)
    await adb(Player.objects.filter(name="mallory").update)(
        banned_until=timezone.now() + timezone.timedelta(days=1)
    )
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 1})
    assert (await receive_type(client, "rejected"))["code"] == "banned"
    await client.disconnect()


async def test_a_banned_player_is_told_at_connect_and_cannot_place(canvas):
    from datetime import timedelta

    from django.utils import timezone

    from canvas.models import Player

    key = await adb(login_session_key)("mallory")
    await (await connect("test", session_key=key))[0].disconnect()  # player made
    until = timezone.now() + timedelta(days=1)
    banning = Player.objects.filter(name="mallory")
    assert await adb(banning.update)(banned_until=until, ban_reason="griefing") == 1
    client, hello = await connect("test", session_key=key)
    assert hello["user"] == "mallory" and hello["can_place"] is False
    banned = await receive_type(client, "banned")
    assert banned["until"] == until.isoformat() and banned["reason"] == "griefing"
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 1})
    assert (await receive_type(client, "rejected"))["code"] == "banned"
    await client.disconnect()


async def test_a_paused_canvas_says_so_after_hello(canvas):
    await adb(type(canvas).objects.filter(pk=canvas.pk).update)(is_open=False)
    key = await adb(login_session_key)("alice")
    client, hello = await connect("test", session_key=key)
    assert hello["can_place"] is False
    settings = await receive_type(client, "canvas")
    assert settings["open"] is False and settings["width"] == 32
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 1})
    assert (await receive_type(client, "rejected"))["code"] == "canvas_closed"
    await client.disconnect()


async def test_hello_follows_the_hubs_settings_not_its_own_earlier_read(
    canvas, monkeypatch
):
    """A resume that lands between a socket's canvas read and its join: the hub
    has seen it and will not announce it again, so hello must not say paused."""
    import copy

    from canvas import selectors

    first, _ = await connect("test", session_key=await adb(login_session_key)("a"))
    stale = copy.copy(canvas)
    stale.is_open = False
    monkeypatch.setattr(selectors, "canvas_get", lambda slug: stale)
    second, hello = await connect("test", session_key=await adb(login_session_key)("b"))
    assert hello["can_place"] is True
    following = json.loads(await second.receive_from(timeout=5))
    assert following["type"] == "online"  # no `canvas` saying paused
    await first.disconnect()
    await second.disconnect()


async def test_connection_row_lives_exactly_as_long_as_the_socket(
    canvas, player_session
):
    client, _ = await connect("test", session_key=player_session)
    rows = await adb(list)(
        Connection.objects.values_list("canvas__slug", "player__name")
    )
    assert len(rows) == 1 and rows[0][0] == "test" and rows[0][1].startswith("anon-")
    await client.disconnect()
    await asyncio.sleep(0.1)
    assert not await adb(Connection.objects.exists)()


async def test_after_hello_the_stream_carries_exactly_the_next_seqs(
    make_canvas, anonymous_play
):
    await adb(make_canvas)(slug="busy", cooldown=0)
    keys = [await adb(session_key_create)(n=i) for i in range(3)]
    placers = [(await connect("busy", session_key=k))[0] for k in keys]
    # Some changes happen before the watcher arrives...
    for i, placer in enumerate(placers):
        await send(placer, {"type": "place", "x": i, "y": 0, "color": 3})
        await receive_type(placer, "accepted")
    watcher, hello = await connect("busy")
    start = hello["seq"]
    # ...and more after, interleaved from several sockets.
    for round_ in range(4):
        for i, placer in enumerate(placers):
            await send(placer, {"type": "place", "x": i, "y": round_ + 1, "color": 4})
    for placer in placers:
        for _ in range(4):
            await receive_type(placer, "accepted")
    seen: list[int] = []
    while len(seen) < 3 + 12 - start:
        seen += [u[0] for u in (await receive_type(watcher, "pixels"))["updates"]]
    assert seen == list(range(start + 1, 16))
    for client in [*placers, watcher]:
        await client.disconnect()


async def test_paused_canvas_refuses_with_canvas_closed(canvas, player_session):
    from canvas.models import Canvas

    client, _ = await connect("test", session_key=player_session)
    await adb(Canvas.objects.filter(slug="test").update)(is_open=False)
    await send(client, {"type": "place", "x": 1, "y": 1, "color": 1})
    rejected = await receive_type(client, "rejected")
    assert rejected["code"] == "canvas_closed"
    assert rejected["message"] == exc.MSG_CANVAS_CLOSED
    assert not await adb(Placement.objects.exists)()
    await client.disconnect()


async def test_online_count_follows_hello(canvas):
    first, _ = await connect("test")
    assert (await receive_type(first, "online"))["count"] == 1
    second, _ = await connect("test")
    assert (await receive_type(second, "online"))["count"] == 2
    await first.disconnect()
    await second.disconnect()


async def test_the_consumer_also_runs_under_channels_url_router(canvas):
    """Mounted the usual channels way, the slug comes from the URL route."""
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator
    from django.urls import re_path

    from canvas.consumers import CanvasConsumer

    app = URLRouter(
        [re_path(r"^ws/canvases/(?P<slug>[-\w]+)/$", CanvasConsumer.as_asgi())]
    )
    client = WebsocketCommunicator(app, "/ws/canvases/test/")
    connected, _ = await client.connect(timeout=5)
    assert connected
    hello = json.loads(await client.receive_from(timeout=5))
    assert hello["type"] == "hello" and hello["user"] is None
    await client.disconnect()


def client_channel(hub) -> str:
    (listener,) = hub.listeners
    return listener.channel_name


async def _rows_when_settled(seconds: float = 3) -> int:
    """Connection rows once the database thread has done what was queued."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        rows = await adb(Connection.objects.count)()
        if rows == 0 or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.1)


async def test_a_socket_killed_mid_handshake_leaves_no_row(canvas, monkeypatch):
    """Daphne cancels the task of a handshake that outlives its timeouts (a
    storm of connections, a slow database). Its row is being written at that
    moment; it must not stay behind, counted online and against the address."""
    from canvas import consumers

    real_admit = consumers._admit
    admitting = threading.Event()

    def slow_admit(*args, **kwargs):
        admitting.set()
        time.sleep(0.5)
        return real_admit(*args, **kwargs)

    monkeypatch.setattr(consumers, "_admit", slow_admit)
    client = communicator("test")
    await client.send_input({"type": "websocket.connect"})
    while not admitting.is_set():
        await asyncio.sleep(0.01)
    client.future.cancel()  # what daphne's application checker does
    await asyncio.sleep(1)  # the admit's insert lands meanwhile
    assert await _rows_when_settled() == 0


async def test_an_admission_whose_socket_was_given_up_does_no_work(
    canvas, django_assert_num_queries
):
    """Queued behind a storm, an admission whose handshake daphne has killed
    skips its queries and writes no row (a release is waiting to delete it)."""
    from canvas import consumers

    given_up = threading.Event()
    given_up.set()

    def admit():
        with django_assert_num_queries(0):
            consumers._admit(
                "test", None, channel_name="gone", ip="127.0.0.1", abandoned=given_up
            )

    with pytest.raises(exc.Abandoned):
        await adb(admit)()
    assert await adb(Connection.objects.count)() == 0


async def test_a_socket_killed_after_its_hello_leaves_no_row_or_listener(canvas):
    from canvas.hub import registry

    client, _ = await connect("test")
    hub = registry.hubs[canvas.pk]
    assert registry.held == {client_channel(hub)}
    # What the heartbeat would need to write the row again, were it swept.
    assert registry.rows == {client_channel(hub): (canvas.pk, None, "127.0.0.1")}
    assert len(hub.listeners) == 1 and await adb(Connection.objects.count)() == 1
    client.future.cancel()
    assert await _rows_when_settled() == 0
    for _ in range(50):  # the release's last step follows the delete's commit
        if not registry.held:
            break
        await asyncio.sleep(0.02)
    assert hub.listeners == set() and registry.held == set() and not registry.rows


async def test_a_stopping_process_leaves_its_rows_to_the_sweep(canvas):
    """Daphne waits for every task when it stops; one delete per socket would
    hold the restart for seconds at 10,000 sockets. The next start sweeps."""
    from canvas import services
    from canvas.hub import SERVER_ID, registry

    client, _ = await connect("test")
    registry.closing = True
    try:
        client.future.cancel()
        await asyncio.sleep(0.5)
        assert await adb(Connection.objects.filter(server=SERVER_ID).count)() == 1
        assert registry.held == set()
    finally:
        registry.closing = False
    await adb(services.connections_sweep)(stale_seconds=40, dead_servers=[SERVER_ID])
    assert await adb(Connection.objects.count)() == 0


async def test_a_burst_of_new_sockets_counts_the_table_once(canvas, monkeypatch):
    """Each new socket is told the online count; in a storm, counting the table
    for every one queued thousands of growing counts ahead of everything else."""
    from canvas import selectors

    reads = []
    real = selectors.connections_online

    def counted(**kwargs):
        reads.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(selectors, "connections_online", counted)
    clients = []
    for expected in range(1, 6):
        client, _ = await connect("test")
        clients.append(client)
        assert (await receive_type(client, "online"))["count"] == expected
    assert len(reads) == 1
    for client in clients:
        await client.disconnect()


async def test_a_ban_and_its_end_reach_the_players_open_page_at_once(
    canvas, anonymous_play
):
    """Not at the player's next click: the page says Banned (and why) now."""
    from datetime import timedelta

    from canvas import moderation

    banned_key = await adb(session_key_create)(seen=True)
    other_key = await adb(session_key_create)(seen=True)
    player, _ = await connect("test", session_key=banned_key)
    other, _ = await connect("test", session_key=other_key)
    player_id = await adb(lambda: Player.objects.get(session_key=banned_key).pk)()
    await adb(moderation.player_ban)(
        player_id=player_id, reason="griefing", duration=timedelta(hours=2)
    )
    banned = await receive_type(player, "banned")
    assert banned["reason"] == "griefing" and banned["until"] > "2026"
    await adb(moderation.player_unban)(player_id=player_id, reason="appeal")
    assert await receive_type(player, "unbanned") == {"type": "unbanned"}
    # Nobody else hears of it.
    while not await other.receive_nothing(timeout=0.3):
        assert json.loads(await other.receive_from())["type"] not in {
            "banned",
            "unbanned",
        }
    await player.disconnect()
    await other.disconnect()
