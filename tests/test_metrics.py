"""The Prometheus endpoint: who may read it and what it counts."""

import logging

import pytest
from django.contrib.auth import get_user_model

from canvas import ingest
from canvas.models import Player

from .conftest import adb, connect, receive_type, send

pytestmark = pytest.mark.django_db(transaction=True)


def test_metrics_refuses_an_address_outside_the_allow_list(client, settings):
    settings.PLACE_METRICS_ALLOW = ["10.0.0.0/8"]
    response = client.get("/metrics", REMOTE_ADDR="192.0.2.7")
    assert response.status_code == 403


def test_metrics_answers_an_allowed_network(client, settings):
    settings.PLACE_METRICS_ALLOW = ["10.0.0.0/8"]
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    for name in (
        "place_connections_open",
        "place_placements_total",
        "place_broadcast_tick_seconds",
        "place_broadcast_lag_seconds",
        "place_channel_layer_errors_total",
    ):
        assert name in body


def test_prometheus_scrapes_a_port_of_an_https_site_by_its_address(client, settings):
    """docs/deploy.md: Prometheus asks `http://127.0.0.1:8001/metrics` while the
    site is `place.example.org` over HTTPS; neither the host check nor the
    HTTPS redirect may turn it away. Browsers still get both."""
    settings.ALLOWED_HOSTS = ["place.example.org"]
    settings.SECURE_SSL_REDIRECT = True
    settings.PLACE_METRICS_ALLOW = ["127.0.0.1"]
    scrape = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_HOST="127.0.0.1:8001")
    assert scrape.status_code == 200 and b"place_placements_total" in scrape.content
    outsider = client.get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_HOST="127.0.0.1")
    assert outsider.status_code == 400  # Django's host check, as for any page
    page = client.get("/", REMOTE_ADDR="127.0.0.1", HTTP_HOST="place.example.org")
    assert page.status_code == 301 and page["Location"].startswith("https://")


def test_metrics_judges_the_client_behind_a_trusted_proxy_not_the_proxy(
    client, settings
):
    settings.PLACE_TRUSTED_PROXIES = ["127.0.0.1"]
    settings.PLACE_METRICS_ALLOW = ["127.0.0.1", "10.0.0.0/8"]
    outsider = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "192.0.2.7"}
    assert client.get("/metrics", **outsider).status_code == 403
    insider = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "10.0.0.9"}
    assert client.get("/metrics", **insider).status_code == 200


def test_metrics_answers_staff_from_anywhere(client, settings):
    settings.PLACE_METRICS_ALLOW = []
    staff = get_user_model().objects.create_user("op", password="pw-123456!")
    staff.is_staff = True
    staff.save()
    client.force_login(staff)
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 200


def test_metrics_refuses_a_logged_in_player(client, settings):
    settings.PLACE_METRICS_ALLOW = []
    user = get_user_model().objects.create_user("pl", password="pw-123456!")
    client.force_login(user)
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 403


def metric(client, line_start: str) -> float:
    body = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    for line in body.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_placements_and_rejections_are_counted_by_code(
    client, make_canvas, caplog
):
    canvas = await adb(make_canvas)(slug="m", width=8, height=8, cooldown=300)
    player = await adb(Player.objects.create)(name="counted")
    placed = await adb(metric)(client, "place_placements_total")
    cooled = await adb(metric)(client, 'place_rejections_total{code="cooldown"}')
    events = logging.getLogger("canvas.placements")
    events.addHandler(caplog.handler)  # the canvas loggers do not propagate
    try:
        await ingest.batcher.submit(ingest.PlaceRequest(canvas.pk, player.pk, 1, 1, 1))
        with pytest.raises(Exception):  # noqa: B017 - the PlaceError is not the point
            await ingest.batcher.submit(
                ingest.PlaceRequest(canvas.pk, player.pk, 2, 2, 1)
            )
    finally:
        events.removeHandler(caplog.handler)
    assert await adb(metric)(client, "place_placements_total") == placed + 1
    cooldown_now = await adb(metric)(client, 'place_rejections_total{code="cooldown"}')
    assert cooldown_now == cooled + 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("event=placement ") and "x=1 y=1" in m for m in messages)
    assert any(
        m.startswith("event=rejection ") and "code=cooldown" in m for m in messages
    )


@pytest.mark.usefixtures("fresh_layer")
async def test_refusals_before_the_database_are_counted_and_logged_too(
    client, make_canvas
):
    """A bad frame or a watcher's click never reaches the ingest thread; an
    operator still sees them by code, with the address."""
    await adb(make_canvas)(slug="r", width=8, height=8)
    bad = 'place_rejections_total{code="bad_request"}'
    anonymous = 'place_rejections_total{code="login_required"}'
    before = {name: await adb(metric)(client, name) for name in (bad, anonymous)}
    events = logging.getLogger("canvas.placements")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    # Connected first: the ASGI application's first import configures logging,
    # which empties the canvas loggers' handlers.
    watcher, _ = await connect("r")
    events.addHandler(handler)
    try:
        await send(watcher, {"type": "place", "x": "1", "y": 1, "color": 1})
        assert (await receive_type(watcher, "rejected"))["code"] == "bad_request"
        await send(watcher, {"type": "place", "x": 1, "y": 1, "color": 1})
        assert (await receive_type(watcher, "rejected"))["code"] == "login_required"
        await watcher.disconnect()
    finally:
        events.removeHandler(handler)
    assert await adb(metric)(client, bad) == before[bad] + 1
    assert await adb(metric)(client, anonymous) == before[anonymous] + 1
    for code in ("bad_request", "login_required"):
        assert any(
            m.startswith("event=rejection ") and f"code={code} ip=127.0.0.1" in m
            for m in lines
        )
