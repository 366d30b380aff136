"""The wire format: parsing client frames and building every server frame.

Nothing else in the project builds or parses WebSocket JSON; docs/protocol.md
describes the same shapes for people.
"""

import json
from dataclasses import dataclass
from datetime import datetime

from . import exceptions as exc

MAX_FRAME_BYTES = 16 * 1024
CLOSE_TOO_LARGE = 4009
CLOSE_TOO_FAST = 4008  # a sustained flood of messages
CLOSE_TOO_MANY = 4029  # too many open sockets from one address (before accept)
CLOSE_NO_CANVAS = 4004  # no canvas by that slug (after accept, so browsers see it)
# The server cannot serve this socket now (its database was unreachable during
# the handshake, or a write to it failed): reconnect with backoff. Not 1011,
# which autobahn refuses to send from an application.
CLOSE_UNAVAILABLE = 4011
Update = tuple[int, int, int, int]  # (seq, x, y, color)


@dataclass(frozen=True)
class PlaceRequest:
    x: int
    y: int
    color: int


class ProtocolError(Exception):
    """A client frame that does not follow the protocol (`bad_request`)."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ProtocolError(exc.MSG_DUPLICATE_KEY.format(key=key))
        seen[key] = value
    return seen


# Larger than any canvas side or palette; what bigger numbers are clamped to.
INT_BOUND = 2**31 - 1


def _bounded_int(digits: str) -> int:
    """A JSON integer; one longer than any coordinate is clamped here, before
    Python's limit on converting long numbers (4,300 digits) refuses the
    whole frame as if it were not JSON."""
    if len(digits) > 12:
        return -1 if digits.startswith("-") else INT_BOUND
    return int(digits)


# One of each, made once: json.loads/dumps with options build a new one per call,
# which showed in profiles at thousands of frames a second.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_int=_bounded_int)
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _int_field(message: dict, field: str) -> int:
    value = message.get(field)
    # bool is a subclass of int in Python, but `true` is not a coordinate.
    if type(value) is not int:
        raise ProtocolError(exc.MSG_BAD_FIELD.format(field=field))
    # Still refused as outside the canvas or palette, but a 400-digit number
    # goes no further (logs, metrics) than this bound.
    return max(-1, min(value, INT_BOUND))


def parse_client_message(text: str) -> PlaceRequest:
    """Parse one text frame from a client; raise ProtocolError if malformed."""
    try:
        message = _DECODER.decode(text)
    except (ValueError, RecursionError):
        raise ProtocolError(exc.MSG_BAD_JSON) from None
    if not isinstance(message, dict):
        raise ProtocolError(exc.MSG_BAD_JSON)
    if message.get("type") != "place":
        raise ProtocolError(exc.MSG_UNKNOWN_TYPE)
    return PlaceRequest(
        x=_int_field(message, "x"),
        y=_int_field(message, "y"),
        color=_int_field(message, "color"),
    )


def _dump(frame: dict) -> str:
    return _ENCODER.encode(frame)


def hello_frame(
    *,
    seq: int,
    cooldown_seconds: int,
    cooldown_remaining: float,
    can_place: bool,
    user: str | None,
) -> str:
    return _dump(
        {
            "type": "hello",
            "seq": seq,
            "cooldown_seconds": cooldown_seconds,
            "cooldown_remaining": round(cooldown_remaining, 3),
            "can_place": can_place,
            "user": user,
        }
    )


def accepted_frame(
    *, x: int, y: int, color: int, seq: int, cooldown_remaining: float
) -> str:
    return _dump(
        {
            "type": "accepted",
            "x": x,
            "y": y,
            "color": color,
            "seq": seq,
            "cooldown_remaining": round(cooldown_remaining, 3),
        }
    )


def rejected_frame(*, code: str, message: str, retry_after: float | None) -> str:
    if retry_after is not None:
        retry_after = round(max(retry_after, 0.0), 3)
    return _dump(
        {
            "type": "rejected",
            "code": code,
            "message": message,
            "retry_after": retry_after,
        }
    )


def pixels_frame(updates: list[Update]) -> str:
    return _dump({"type": "pixels", "updates": [list(u) for u in updates]})


def online_frame(count: int) -> str:
    return _dump({"type": "online", "count": count})


def banned_frame(*, until: datetime, reason: str) -> str:
    """To a banned player: after `hello`, and live when a moderator bans them."""
    return _dump({"type": "banned", "until": until.isoformat(), "reason": reason})


def unbanned_frame() -> str:
    """Live, to a player's open sockets when a moderator lifts their ban."""
    return _dump({"type": "unbanned"})


def canvas_frame(*, cooldown_seconds: int, open_: bool, width: int, height: int) -> str:
    """Canvas settings changed by a moderator or operator (cooldown, pause, size)."""
    return _dump(
        {
            "type": "canvas",
            "cooldown_seconds": cooldown_seconds,
            "open": open_,
            "width": width,
            "height": height,
        }
    )
