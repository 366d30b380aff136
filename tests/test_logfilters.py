"""canvas/logfilters.py: a repeating error is shown once, then once a window."""

import logging
import sys

from canvas.logfilters import RepeatsQuieted


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _failing_record(name: str = "channels_redis.pubsub") -> logging.LogRecord:
    try:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")
    except ConnectionError:
        return logging.getLogger(name).makeRecord(
            name,
            logging.ERROR,
            __file__,
            1,
            "Unexpected exception in receive task",
            None,
            exc_info=sys.exc_info(),
        )


def test_first_error_whole_then_one_summary_line_a_window():
    clock = Clock()
    quiet = RepeatsQuieted(window=60, clock=clock)
    first = _failing_record()
    assert quiet.filter(first) and first.exc_info  # the traceback, once
    passed = []
    for _ in range(59):  # a retry a second, as channels-redis does
        clock.now += 1
        passed.append(quiet.filter(_failing_record()))
    assert not any(passed)
    clock.now += 1
    summary = _failing_record()
    assert quiet.filter(summary)
    assert summary.exc_info is None
    assert summary.getMessage() == (
        "Unexpected exception in receive task (again 60 times in 60 s;"
        " latest: ConnectionError: Error 111 connecting to 127.0.0.1:6379)"
    )
    clock.now += 1
    assert not quiet.filter(_failing_record())


def test_a_new_outage_after_a_quiet_window_shows_its_traceback_again():
    clock = Clock()
    quiet = RepeatsQuieted(window=60, clock=clock)
    assert quiet.filter(_failing_record())
    clock.now += 3600
    again = _failing_record()
    assert quiet.filter(again) and again.exc_info


def test_other_messages_and_loggers_are_not_held_back():
    clock = Clock()
    quiet = RepeatsQuieted(window=60, clock=clock)
    assert quiet.filter(_failing_record("channels_redis.pubsub"))
    assert quiet.filter(_failing_record("channels_redis.core"))
    other = logging.LogRecord(
        "channels_redis.pubsub",
        logging.ERROR,
        __file__,
        1,
        "cleanup failed",
        None,
        None,
    )
    assert quiet.filter(other)


def test_settings_attach_it_to_channels_redis_loggers():
    for name in (
        "channels_redis.pubsub",
        "channels_redis.core",
        "canvas.broadcast",
        "canvas.hub",
    ):
        filters = logging.getLogger(name).filters
        assert any(isinstance(f, RepeatsQuieted) for f in filters), name


def test_lines_below_warning_are_never_held_back():
    quiet = RepeatsQuieted(window=60, clock=Clock())
    for _ in range(3):
        info = logging.LogRecord(
            "canvas.hub", logging.INFO, __file__, 1, "refilled %d changes", (5,), None
        )
        assert quiet.filter(info)
