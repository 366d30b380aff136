"""Whether PostgreSQL and Redis are reachable, and what to do when they are not.

Off CI a missing service skips the tests that need it, with the reason; under
CI=true it fails them, because CI's machine has both running.
"""

import os
import socket

import pytest

POSTGRES_HOST = os.environ.get("PLACE_TEST_PG_HOST", "127.0.0.1")
POSTGRES_PORT = int(os.environ.get("PLACE_TEST_PG_PORT", "5432"))
POSTGRES_ADMIN_URL = f"postgres://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres"
REDIS_HOST = os.environ.get("PLACE_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("PLACE_TEST_REDIS_PORT", "6379"))
# Live tests flush this Redis database; pick another to run two suites at once.
REDIS_DB = int(os.environ.get("PLACE_TEST_REDIS_DB", "3"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if in_ci():
        pytest.fail(f"{message}; CI must provide it", pytrace=False)
    pytest.skip(f"{message}; start it to run this test")


def require_postgres() -> None:
    require("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)


def require_redis() -> None:
    require("Redis", REDIS_HOST, REDIS_PORT)
