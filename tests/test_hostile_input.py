"""Hostile input: thousands of generated frames against the parser and a live socket.

Nothing may raise past the consumer, nothing invalid may write a row, and the
socket must still accept a valid placement afterwards.
"""

import json

import pytest
from asgiref.sync import async_to_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canvas import protocol
from canvas.models import Placement

from .conftest import adb, connect, session_key_create

WIDTH, HEIGHT, COLORS = 32, 16, 16

junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)
coordinate = st.one_of(
    st.integers(-5, 40),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    junk,
)


@st.composite
def place_objects(draw) -> str:
    message = {"type": draw(st.sampled_from(["place", "place", "Place", "", "wipe"]))}
    for field in ("x", "y", "color"):
        if draw(st.booleans()) or draw(st.booleans()):
            message[field] = draw(coordinate)
    extra = draw(st.dictionaries(st.text(max_size=4), junk, max_size=2))
    text = json.dumps({**extra, **message})
    if draw(st.integers(0, 9)) == 0:  # a duplicated key
        text = text[:-1] + ', "x": 1}'
    return text


@st.composite
def near_limit(draw) -> str:
    body = draw(place_objects())
    size = draw(st.integers(protocol.MAX_FRAME_BYTES - 40, protocol.MAX_FRAME_BYTES))
    pad = max(0, size - len(body) - len(',"pad":""'))
    return body[:-1] + ',"pad":"' + "é" * (pad // 2) + "a" * (pad % 2) + '"}'


frames = st.one_of(
    place_objects(),
    place_objects(),
    st.text(min_size=1, max_size=200),
    st.binary(min_size=1, max_size=200),
    junk.map(json.dumps),
    near_limit(),
    st.integers(1, 3000).map(lambda depth: "[" * depth + "]" * depth),
)


class _Object(list):
    """A JSON object as its list of (key, value) pairs, duplicates kept."""


def oracle(frame) -> bool:
    """Is this frame a valid, in-bounds placement? Written independently of the
    parser: a plain reading of the contract."""
    if isinstance(frame, bytes):
        return False
    try:
        parsed = json.loads(frame, object_pairs_hook=_Object)
    except (ValueError, RecursionError):
        return False
    if not isinstance(parsed, _Object) or len({k for k, _ in parsed}) != len(parsed):
        return False
    message = dict(parsed)
    if message.get("type") != "place":
        return False
    values = [message.get(f) for f in ("x", "y", "color")]
    if any(type(v) is not int for v in values):
        return False
    x, y, color = values
    return 0 <= x < WIDTH and 0 <= y < HEIGHT and 0 <= color < COLORS


@settings(max_examples=4000, deadline=None)
@given(frame=frames)
def test_parser_returns_a_request_or_a_protocol_error(frame):
    if isinstance(frame, bytes):
        return
    try:
        request = protocol.parse_client_message(frame)
    except protocol.ProtocolError as error:
        assert str(error)
    else:
        assert all(type(v) is int for v in (request.x, request.y, request.color))


@pytest.mark.django_db(transaction=True)
@settings(
    max_examples=int(__import__("os").environ.get("HOSTILE_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=100, max_size=100))
def test_consumer_survives_ten_thousand_hostile_frames(make_canvas, settings, batch):
    settings.PLACE_REQUIRE_LOGIN = False
    settings.PLACE_MESSAGE_RATE = 0
    make_canvas(slug="hostile", width=WIDTH, height=HEIGHT, cooldown=0)
    async_to_sync(_run_batch)(batch)


async def _run_batch(batch: list) -> None:
    key = await adb(session_key_create)(seen=True)
    client, _ = await connect("hostile", session_key=key)
    before = await adb(Placement.objects.count)()
    accepted = 0
    for frame in batch:
        if isinstance(frame, bytes):
            await client.send_to(bytes_data=frame)
        else:
            await client.send_to(text_data=frame)
        reply = await _reply(client)
        if reply["type"] == "accepted":
            assert oracle(frame), frame
            accepted += 1
        else:
            assert reply["type"] == "rejected"
            assert not oracle(frame), (frame, reply)
            assert reply["code"] in {"bad_request", "out_of_bounds", "invalid_color"}
    assert await adb(Placement.objects.count)() == before + accepted
    await client.send_to(text_data='{"type":"place","x":0,"y":0,"color":1}')
    assert (await _reply(client))["type"] == "accepted"
    await client.disconnect()


async def _reply(client) -> dict:
    while True:
        message = json.loads(await client.receive_from(timeout=10))
        if message["type"] in {"accepted", "rejected"}:
            return message
