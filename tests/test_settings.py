"""placeproject/settings.py: a mistake stops the process and names the variable."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

SETTINGS = Path(__file__).resolve().parent.parent / "placeproject" / "settings.py"
SETTING_VARS = ("DJANGO_", "PLACE_", "DATABASE_URL", "REDIS_URL")


@pytest.fixture
def environ(monkeypatch):
    """A clean environment: the defaults, plus what a test sets."""
    for name in list(os.environ):
        if name.startswith(SETTING_VARS):
            monkeypatch.delenv(name)
    return monkeypatch


def load(environ, **values) -> dict:
    for name, value in values.items():
        environ.setenv(name, value)
    return runpy.run_path(str(SETTINGS))


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("PLACE_REQUIRE_LOGIN", "enabled", "must be true or false"),
        ("DJANGO_HTTPS", "enabled", "must be true or false"),
        ("PLACE_MESSAGE_RATE", "fast", "must be a number"),
        ("PLACE_MESSAGE_RATE", "nan", "must be a number"),
        ("PLACE_MESSAGE_RATE", "-5", "must be at least 0"),
        ("PLACE_IP_LIMIT", "1.5", "must be a whole number"),
        ("PLACE_MAX_CONNECTIONS_PER_IP", "-1", "must be at least 0"),
        ("PLACE_SIGNUP_LIMIT", "5 # per hour", "must be a whole number"),
        ("PLACE_HEARTBEAT_SECONDS", "0", "must be more than 0"),
        ("PLACE_HEARTBEAT_SECONDS", "20", "under half of"),
        ("PLACE_BROADCAST_TICK", "0", "must be more than 0"),
        ("PLACE_DB_POOL_SIZE", "-1", "must be at least 0"),
        ("PLACE_LOG_LEVEL", "verbose", "must be DEBUG, INFO"),
        ("PLACE_TRUSTED_PROXIES", "10.0.0.1,localhost", "'localhost' is not an IP"),
        ("PLACE_METRICS_ALLOW", "1.2.3.4/99", "'1.2.3.4/99' is not an IP"),
        ("DATABASE_URL", "garbage", "is not a database URL"),
        ("REDIS_URL", "127.0.0.1:6379", "must be a redis://"),
        ("DJANGO_ALLOWED_HOSTS", " , ", "DJANGO_ALLOWED_HOSTS is empty"),
    ],
)
def test_a_bad_value_is_refused_by_name(environ, name, value, says):
    with pytest.raises(ImproperlyConfigured) as refused:
        load(environ, **{name: value})
    assert name in str(refused.value) and says in str(refused.value)


def test_good_values_are_read(environ):
    loaded = load(
        environ,
        PLACE_REQUIRE_LOGIN="off",
        PLACE_MESSAGE_RATE=" 2.5 ",
        PLACE_IP_LIMIT="0",
        PLACE_TRUSTED_PROXIES="10.0.0.1, 192.168.0.0/16, ::1",
        PLACE_LOG_LEVEL="warning",
        REDIS_URL="redis://127.0.0.1:6379/3",
    )
    assert loaded["PLACE_REQUIRE_LOGIN"] is False
    assert loaded["PLACE_MESSAGE_RATE"] == 2.5 and loaded["PLACE_IP_LIMIT"] == 0
    assert loaded["PLACE_TRUSTED_PROXIES"] == ["10.0.0.1", "192.168.0.0/16", "::1"]
    assert loaded["LOGGING"]["loggers"]["canvas"]["level"] == "WARNING"
    assert loaded["CHANNEL_LAYERS"]["default"]["CONFIG"]["prefix"] == "asgi-db3"


def test_the_defaults_are_the_documented_ones(environ):
    loaded = load(environ)
    assert loaded["DEBUG"] is True and loaded["PLACE_REQUIRE_LOGIN"] is True
    assert loaded["ALLOWED_HOSTS"] == ["localhost", "127.0.0.1"]
    assert loaded["PLACE_MESSAGE_RATE"] == 20 and loaded["PLACE_IP_LIMIT"] == 0
    assert loaded["PLACE_MAX_CONNECTIONS_PER_IP"] == 50
    assert loaded["PLACE_TRUSTED_PROXIES"] == []
    assert loaded["DATABASES"]["default"]["ENGINE"].endswith("sqlite3")


def test_an_operator_sees_the_variable_in_the_last_line():
    """What the terminal or journal shows last when the process refuses to start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_VARS)}
    env["PLACE_MESSAGE_RATE"] = "fast"
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=SETTINGS.parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "django.core.exceptions.ImproperlyConfigured: "
        "PLACE_MESSAGE_RATE must be a number, not 'fast'"
    )


def test_postgres_connections_give_up_on_a_vanished_host(environ):
    """TCP keepalives and a 10 s TCP_USER_TIMEOUT unless the URL says otherwise
    (tests/test_faults.py shows what they do with a blackholed database)."""
    options = load(environ, DATABASE_URL="postgres://u@db.example:5432/place")[
        "DATABASES"
    ]["default"]["OPTIONS"]
    assert options["tcp_user_timeout"] == 10_000 and options["keepalives"] == 1
    assert options["keepalives_idle"] == 10 and options["pool"]["max_size"] == 8
    url = "postgres://u@db.example:5432/place?tcp_user_timeout=30000"
    options = load(environ, DATABASE_URL=url)["DATABASES"]["default"]["OPTIONS"]
    assert str(options["tcp_user_timeout"]) == "30000"
    environ.delenv("DATABASE_URL")
    sqlite = load(environ)["DATABASES"]["default"]["OPTIONS"]
    assert "tcp_user_timeout" not in sqlite  # SQLite would refuse the option
