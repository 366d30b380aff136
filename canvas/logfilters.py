"""Logging filters: a dependency's repeating error shown once, then summarised.

channels-redis's subscriber loop logs a full traceback and retries every second
while Redis is unreachable: per process, 60 tracebacks a minute that bury
everything else an operator needs to read during the outage. The first one is
kept whole; repeats of the same message are counted and reported once per
window in one line with the latest error.
"""

import logging
import time
from collections.abc import Callable

WINDOW_SECONDS = 60.0


class RepeatsQuieted(logging.Filter):
    """Pass a warning's or error's first record; then at most one line per
    window. Lower levels pass untouched."""

    def __init__(
        self,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        # (logger, message template) -> [last passed at, records held back since]
        self.seen: dict[tuple[str, str], list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # events and progress lines are not failures
        key = (record.name, str(record.msg))
        now = self.clock()
        state = self.seen.get(key)
        if state is None or (now - state[0] >= self.window and not state[1]):
            # First time, or quiet for a whole window: the full record again.
            self.seen[key] = [now, 0]
            return True
        if now - state[0] < self.window:
            state[1] += 1
            return False
        held = state[1] + 1
        self.seen[key] = [now, 0]
        latest = ""
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            latest = f"; latest: {type(error).__name__}: {error}"
        record.msg = (
            f"{record.getMessage()} (again {held} times in {self.window:.0f} s{latest})"
        )
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True
