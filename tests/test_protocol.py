"""The wire format: what the parser accepts and refuses, and frame shapes."""

import json

import pytest

from canvas import exceptions as exc
from canvas import protocol


def test_place_message_parses_into_a_request():
    request = protocol.parse_client_message('{"type":"place","x":3,"y":4,"color":5}')
    assert request == protocol.PlaceRequest(x=3, y=4, color=5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", exc.MSG_BAD_JSON),
        ("[1, 2]", exc.MSG_BAD_JSON),
        ('"place"', exc.MSG_BAD_JSON),
        ("", exc.MSG_BAD_JSON),
        ('{"type":"paint","x":1,"y":1,"color":1}', exc.MSG_UNKNOWN_TYPE),
        ('{"x":1,"y":1,"color":1}', exc.MSG_UNKNOWN_TYPE),
        ('{"type":"place","y":1,"color":1}', exc.MSG_BAD_FIELD.format(field="x")),
        (
            '{"type":"place","x":1.5,"y":1,"color":1}',
            exc.MSG_BAD_FIELD.format(field="x"),
        ),
        (
            '{"type":"place","x":"1","y":1,"color":1}',
            exc.MSG_BAD_FIELD.format(field="x"),
        ),
        (
            '{"type":"place","x":true,"y":1,"color":1}',
            exc.MSG_BAD_FIELD.format(field="x"),
        ),
        (
            '{"type":"place","x":1,"y":null,"color":1}',
            exc.MSG_BAD_FIELD.format(field="y"),
        ),
        (
            '{"type":"place","x":1,"y":1,"color":[1]}',
            exc.MSG_BAD_FIELD.format(field="color"),
        ),
        (
            '{"type":"place","x":1,"x":2,"y":1,"color":1}',
            exc.MSG_DUPLICATE_KEY.format(key="x"),
        ),
        ("[" * 100000, exc.MSG_BAD_JSON),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(text, message):
    with pytest.raises(protocol.ProtocolError) as error:
        protocol.parse_client_message(text)
    assert str(error.value) == message


def test_frames_are_compact_json_with_the_contract_fields():
    hello = json.loads(
        protocol.hello_frame(
            seq=7,
            cooldown_seconds=300,
            cooldown_remaining=12.34567,
            can_place=True,
            user="a",
        )
    )
    assert hello == {
        "type": "hello",
        "seq": 7,
        "cooldown_seconds": 300,
        "cooldown_remaining": 12.346,
        "can_place": True,
        "user": "a",
    }
    assert json.loads(protocol.pixels_frame([(1, 2, 3, 4)])) == {
        "type": "pixels",
        "updates": [[1, 2, 3, 4]],
    }
    rejected = json.loads(
        protocol.rejected_frame(code="cooldown", message="m", retry_after=-1)
    )
    assert rejected == {
        "type": "rejected",
        "code": "cooldown",
        "message": "m",
        "retry_after": 0.0,
    }


@pytest.mark.parametrize("digits", [20, 400, 5000])
def test_numbers_far_outside_any_canvas_are_clamped_not_carried(digits):
    """Even past Python's 4,300-digit conversion limit: out of bounds (a clear
    answer), not "Messages must be JSON objects"."""
    huge = "1" + "0" * digits
    request = protocol.parse_client_message(
        f'{{"type": "place", "x": {huge}, "y": -{huge}, "color": {huge}}}'
    )
    assert request == protocol.PlaceRequest(
        x=protocol.INT_BOUND, y=-1, color=protocol.INT_BOUND
    )
