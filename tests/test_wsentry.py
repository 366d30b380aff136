"""The WebSocket entry: routes, origins and the session cookie."""

import pytest
from django.contrib.auth import get_user_model

from canvas.models import Connection
from canvas.wsentry import request_parts

from .conftest import ORIGIN, PeerCommunicator, adb, connect, login_session_key

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("fresh_layer"),
]


@pytest.fixture
def canvas(make_canvas):
    return make_canvas(slug="test", width=32, height=16, cooldown=300)


def test_request_parts_finds_origin_and_session_among_other_cookies():
    origin, key = request_parts(
        [
            (b"origin", b"https://place.example:8443"),
            (b"cookie", b'theme=dark; broken"cookie; sessionid=abc123def456; x=1'),
        ]
    )
    assert (origin.scheme, origin.hostname, origin.port) == (
        "https",
        "place.example",
        8443,
    )
    assert key == "abc123def456"


def test_request_parts_without_headers_has_neither():
    assert request_parts([]) == (None, None)


@pytest.mark.parametrize(
    "path", ["/ws/elsewhere/", "/ws/canvases/", "/ws/canvases/a b/", "/ws/canvases/x"]
)
async def test_unknown_paths_are_refused_without_a_trace(canvas, path):
    from placeproject.asgi import application

    client = PeerCommunicator(application, path, [ORIGIN], ("127.0.0.1", 50000))
    connected, _ = await client.connect(timeout=5)
    assert not connected
    assert not await adb(Connection.objects.exists)()


async def test_logged_in_cookie_among_others_identifies_the_player(canvas):
    key = await adb(login_session_key)("carol")
    cookie = f"theme=dark; csrftoken=abc; sessionid={key}".encode()
    client, hello = await connect("test", headers=[ORIGIN, (b"cookie", cookie)])
    assert hello["user"] == "carol" and hello["can_place"] is True
    await client.disconnect()


async def test_session_from_before_a_password_change_only_watches(canvas):
    key = await adb(login_session_key)("dave")

    def change_password():
        user = get_user_model().objects.get(username="dave")
        user.set_password("a-new-password-42")
        user.save()

    await adb(change_password)()
    client, hello = await connect("test", session_key=key)
    assert hello["user"] is None and hello["can_place"] is False
    await client.disconnect()


async def test_made_up_session_cookie_only_watches(canvas):
    client, hello = await connect(
        "test", session_key="nosuchsession0000000000000000000"
    )
    assert hello["user"] is None and hello["can_place"] is False
    await client.disconnect()


def test_request_parts_takes_the_first_session_cookie():
    _, key = request_parts(
        [(b"cookie", b"sessionid=firstkey123"), (b"cookie", b"sessionid=bogus456")]
    )
    assert key == "firstkey123"


async def test_expired_session_only_watches_even_with_anonymous_play(
    canvas, anonymous_play
):
    from datetime import timedelta

    from django.contrib.sessions.models import Session
    from django.utils import timezone

    from .conftest import session_key_create

    key = await adb(session_key_create)(seen=True)
    expire = Session.objects.filter(session_key=key).update
    await adb(expire)(expire_date=timezone.now() - timedelta(days=1))
    client, hello = await connect("test", session_key=key)
    assert hello["user"] is None and hello["can_place"] is False
    await client.disconnect()


async def test_a_root_path_prefix_is_understood(canvas):
    """daphne --root-path /place: paths arrive with the prefix, as URLRouter knew."""
    from placeproject.asgi import application

    client = PeerCommunicator(
        application, "/place/ws/canvases/test/", [ORIGIN], ("127.0.0.1", 50000)
    )
    client.scope["root_path"] = "/place"
    connected, _ = await client.connect(timeout=5)
    assert connected
    await client.disconnect()
