"""Abuse limits: message rate, connections per IP, placements per IP, account age,
sign-up and log-in attempts."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from canvas import exceptions as exc
from canvas import services
from canvas.hub import registry
from canvas.models import Connection, Placement, Player

from .conftest import adb, communicator, connect, send, session_key_create


@pytest.fixture
def canvas(make_canvas):
    return make_canvas(slug="test", width=32, height=16, cooldown=0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_layer")
async def test_messages_over_the_rate_get_rate_limited_with_retry_after(
    canvas, anonymous_play
):
    anonymous_play.PLACE_MESSAGE_RATE = 5
    key = await adb(session_key_create)(seen=True)
    client, _ = await connect("test", session_key=key)
    # Every message counts, not only placements; answered at once (a
    # placement's commit could take long enough to refill the bucket).
    for _ in range(5):
        await send(client, {"type": "hello"})
    await send(client, {"type": "place", "x": 0, "y": 0, "color": 1})
    replies: list[dict] = []
    while len(replies) < 6:
        reply = json.loads(await client.receive_from())
        if reply["type"] in {"accepted", "rejected"}:
            replies.append(reply)
    assert [r["code"] for r in replies[:5]] == ["bad_request"] * 5
    assert replies[5]["code"] == "rate_limited"
    assert 0 < replies[5]["retry_after"] <= 0.2
    assert await adb(Placement.objects.count)() == 0
    await client.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_layer")
async def test_a_sustained_flood_closes_the_socket(canvas, anonymous_play):
    anonymous_play.PLACE_MESSAGE_RATE = 5
    client, _ = await connect("test")
    closed = None
    for _ in range(200):
        await client.send_to(text_data="{}")
    while closed is None:
        output = await client.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            closed = output["code"]
    assert closed == 4008


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_layer")
async def test_connections_per_ip_are_capped(canvas, settings):
    settings.PLACE_MAX_CONNECTIONS_PER_IP = 2
    first, _ = await connect("test", client=("198.51.100.1", 1))
    second, _ = await connect("test", client=("198.51.100.1", 2))
    third = communicator("test", client=("198.51.100.1", 3))
    connected, code = await third.connect(timeout=5)
    assert not connected and code == 4029
    await third.wait(timeout=5)
    assert len(registry.held) == 2  # the refused socket holds nothing
    # Another address is unaffected, and a freed slot can be used again.
    other, _ = await connect("test", client=("198.51.100.2", 1))
    await first.disconnect()
    again, _ = await connect("test", client=("198.51.100.1", 4))
    for client in (second, other, again):
        await client.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_layer")
async def test_forged_forwarded_for_does_not_escape_the_connection_cap(
    canvas, settings
):
    settings.PLACE_MAX_CONNECTIONS_PER_IP = 1
    settings.PLACE_TRUSTED_PROXIES = []
    first, _ = await connect("test", client=("198.51.100.1", 1))
    headers = [(b"origin", b"http://127.0.0.1:8000"), (b"x-forwarded-for", b"1.1.1.1")]
    forged = communicator("test", headers=headers, client=("198.51.100.1", 2))
    connected, _ = await forged.connect(timeout=5)
    assert not connected
    await first.disconnect()


@pytest.mark.django_db(transaction=True)
def test_the_connection_cap_holds_for_a_burst_of_simultaneous_handshakes(
    make_canvas, settings
):
    """Twenty handshakes from one address at once: exactly the cap gets in.

    Counting and inserting are one serialised step (an advisory lock per
    address on PostgreSQL), so no burst passes the count before rows exist.
    """
    canvas = make_canvas(slug="burst")
    settings.PLACE_MAX_CONNECTIONS_PER_IP = 5
    start = threading.Barrier(20)

    def handshake(i: int) -> str:
        start.wait()
        try:
            services.connection_open(
                channel_name=f"burst-{i}",
                canvas_id=canvas.pk,
                player_id=None,
                server="test:1",
                ip="198.51.100.7",
                ip_limit=settings.PLACE_MAX_CONNECTIONS_PER_IP,
            )
        except exc.TooManyConnections:
            return "refused"
        finally:
            connection.close()  # each thread's own
        return "open"

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(handshake, range(20)))
    assert results.count("open") == 5 and results.count("refused") == 15
    assert Connection.objects.filter(ip="198.51.100.7").count() == 5


@pytest.mark.django_db(transaction=True)
def test_rows_nobody_refreshes_do_not_count_against_the_cap(make_canvas, settings):
    """A dead process's rows (stale) never lock an address out."""
    canvas = make_canvas(slug="stale")
    old = timezone.now() - timedelta(
        seconds=settings.PLACE_CONNECTION_STALE_SECONDS + 1
    )
    for i in range(3):
        Connection.objects.create(
            channel_name=f"dead-{i}", canvas=canvas, server="gone:1", ip="198.51.100.8"
        )
    Connection.objects.filter(server="gone:1").update(last_seen=old)

    def open_one(name: str) -> None:
        services.connection_open(
            channel_name=name,
            canvas_id=canvas.pk,
            player_id=None,
            server="test:1",
            ip="198.51.100.8",
            ip_limit=1,
        )

    open_one("alive")
    with pytest.raises(exc.TooManyConnections):
        open_one("one-too-many")


def test_ip_limit_counts_placements_per_address_per_cooldown_period(
    make_canvas, settings
):
    settings.PLACE_IP_LIMIT = 2
    canvas = make_canvas(cooldown=60)
    players = [Player.objects.create(name=f"sock{i}") for i in range(4)]

    def place(player, ip):
        return services.placement_create(
            canvas_id=canvas.pk, player_id=player.pk, x=1, y=1, color=2, ip=ip
        )

    place(players[0], "203.0.113.5")
    place(players[1], "203.0.113.5")
    with pytest.raises(exc.PlaceError) as error:
        place(players[2], "203.0.113.5")
    assert error.value.code == "rate_limited" and 59 < error.value.retry_after <= 60
    # The refused player's own cooldown was not spent.
    place(players[2], "203.0.113.6")
    assert Placement.objects.count() == 3
    # After the period the address may place again.
    from canvas.models import IpQuota

    IpQuota.objects.update(window_start=timezone.now() - timedelta(seconds=61))
    place(players[3], "203.0.113.5")


def test_ip_limit_off_by_default(make_canvas):
    canvas = make_canvas(cooldown=0)
    player = Player.objects.create(name="solo")
    for x in range(5):
        services.placement_create(
            canvas_id=canvas.pk,
            player_id=player.pk,
            x=x,
            y=0,
            color=1,
            ip="203.0.113.5",
        )
    assert Placement.objects.count() == 5


def test_new_accounts_wait_for_the_minimum_age(make_canvas, settings):
    settings.PLACE_MIN_ACCOUNT_AGE = 3600
    canvas = make_canvas(cooldown=0)
    user = get_user_model().objects.create_user("newbie", password="x-long-pass-1")
    player = services.player_for_user(user=user)
    with pytest.raises(exc.PlaceError) as error:
        services.placement_create(
            canvas_id=canvas.pk, player_id=player.pk, x=0, y=0, color=1
        )
    assert error.value.code == "cooldown"
    assert error.value.message == exc.MSG_ACCOUNT_TOO_NEW
    assert 3590 < error.value.retry_after <= 3600
    user.date_joined = timezone.now() - timedelta(hours=2)
    user.save()
    services.placement_create(
        canvas_id=canvas.pk, player_id=player.pk, x=0, y=0, color=1
    )


def test_login_attempts_are_limited_per_address(client, db, settings):
    settings.PLACE_LOGIN_LIMIT = 3
    get_user_model().objects.create_user("gina", password="right-pass-123")
    for _ in range(3):
        response = client.post(
            "/accounts/login/", {"username": "gina", "password": "no"}
        )
        assert response.status_code == 200
    response = client.post(
        "/accounts/login/", {"username": "gina", "password": "right-pass-123"}
    )
    assert response.status_code == 429
    assert b"Too many attempts" in response.content
    assert "_auth_user_id" not in client.session


def test_signups_are_limited_per_address(client, db, settings):
    settings.PLACE_SIGNUP_LIMIT = 2
    for i in range(2):
        client.post(
            "/accounts/signup/",
            {
                "username": f"u{i}",
                "password1": "a-long-pass-123",
                "password2": "a-long-pass-123",
            },
        )
        client.logout()
    response = client.post(
        "/accounts/signup/",
        {
            "username": "u9",
            "password1": "a-long-pass-123",
            "password2": "a-long-pass-123",
        },
    )
    assert response.status_code == 429
    assert not get_user_model().objects.filter(username="u9").exists()
