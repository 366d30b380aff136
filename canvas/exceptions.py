"""Domain errors carrying the contract's rejection codes, and their messages."""

# Messages are constants so tests and clients can rely on them.
MSG_COOLDOWN = "You can place again when your cooldown ends."
MSG_OUT_OF_BOUNDS = "That pixel is outside the canvas."
MSG_INVALID_COLOR = "That colour is not in this canvas's palette."
MSG_LOGIN_REQUIRED = "Log in to place pixels."
MSG_NO_SESSION = "Open the page in a browser (with cookies) to place pixels."
MSG_BANNED = "You are banned from placing pixels."
MSG_CANVAS_CLOSED = "This canvas is paused; nobody can place right now."
MSG_RATE_LIMITED = "You are sending messages too fast; slow down."
MSG_IP_LIMIT = "Too many placements from your network; wait a little."
MSG_ACCOUNT_TOO_NEW = "Your account is too new to place yet; it will be able to soon."
MSG_TOO_MANY_CONNECTIONS = "Too many open connections from your address."
MSG_UNAVAILABLE = "The server could not save that right now; try again shortly."
MSG_BAD_JSON = "Messages must be JSON objects."
MSG_BINARY = "Binary frames are not accepted; send JSON text."
MSG_UNKNOWN_TYPE = "Unknown message type."
MSG_BAD_FIELD = "Field {field!r} must be an integer."
MSG_DUPLICATE_KEY = "Duplicate key {key!r} in message."


class PlaceError(Exception):
    """A placement was refused; `code` is the contract's rejection code."""

    def __init__(self, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class CanvasNotFound(Exception):
    """No canvas has that slug."""


class TooManyConnections(Exception):
    """The address already holds PLACE_MAX_CONNECTIONS_PER_IP open sockets."""


class CanvasResized(Exception):
    """The canvas changed size between a placement's checks and its lock."""


class Abandoned(Exception):
    """The socket went away before its admission began (or wrote its row)."""
