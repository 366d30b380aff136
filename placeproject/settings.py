"""Settings read from the environment, with development defaults (docs/protocol.md)."""

import ipaddress
import math
import os
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


# An operator's typo must stop the process with the variable's name, not fail
# open (`PLACE_REQUIRE_LOGIN=enabled` meaning false) or end in a bare traceback.
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(
        f"{name} must be true or false (or 1/0, yes/no, on/off), not {value!r}"
    )


def env_int(name: str, default: int, minimum: int = 0) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} must be a whole number, not {value!r}"
        ) from None
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {number}")
    return number


def env_float(
    name: str, default: float, minimum: float = 0.0, positive: bool = False
) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}")
    if positive and number <= 0:
        raise ImproperlyConfigured(f"{name} must be more than 0, not {value}")
    if number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum:g}, not {value}")
    return number


def env_list(name: str, default: str) -> list[str]:
    raw = os.environ.get(name, default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_networks(name: str, default: str) -> list[str]:
    """Addresses or networks (CIDR), each checked: a dropped typo would
    silently trust, or shut out, the wrong clients."""
    entries = env_list(name, default)
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ImproperlyConfigured(
                f"{name}: {entry!r} is not an IP address or network"
                " (names such as 'localhost' are not resolved)"
            ) from None
    return entries


DEBUG = env_bool("DJANGO_DEBUG", True)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required when DEBUG is off")
    SECRET_KEY = "django-insecure-development-key-only-for-local-play"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS is empty: every request would get 400 (name the"
        " site's host names, comma-separated)"
    )

INSTALLED_APPS = [
    "daphne",
    "servestatic",  # its configuration checks
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",  # intcomma: the admin's counts read 12,345
    "channels",
    "canvas",
]

MIDDLEWARE = [
    "canvas.middleware.ForwardedProtoGuard",  # before anything asks is_secure()
    "canvas.middleware.MetricsForScrapers",  # before the host check and redirect
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "canvas.middleware.DatabaseUnavailable",  # innermost: sees the views' errors
]

ROOT_URLCONF = "placeproject.urls"
ASGI_APPLICATION = "placeproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_database_url = os.environ.get("DATABASE_URL", "").strip()
try:
    DATABASES = {
        "default": dj_database_url.parse(
            _database_url or f"sqlite:///{BASE_DIR / 'db.sqlite3'}", conn_max_age=0
        )
    }
except ValueError as error:
    raise ImproperlyConfigured(
        f"DATABASE_URL is not a database URL ({error}); for example"
        " postgres://user:password@host:5432/name or sqlite:////path/db.sqlite3"
    ) from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock
    # at BEGIN so the conditional cooldown UPDATE cannot race (see services.py).
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("PLACE_TEST_SQLITE", str(BASE_DIR / "test-db.sqlite3"))
    }
PLACE_DB_POOL_SIZE = env_int("PLACE_DB_POOL_SIZE", 8)
if PLACE_DB_POOL_SIZE == 1:
    raise ImproperlyConfigured(
        "PLACE_DB_POOL_SIZE must be 0 (no pool) or at least 2: the ingest writer"
        " and the other database threads each hold a connection"
    )
_postgres = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
if _postgres:
    # A database host that vanishes without a reset (power lost, a network
    # partition) would hold every query in flight, and the thread waiting on
    # it (the ingest writer, say), until the kernel stops retransmitting:
    # about 15 minutes. Unacknowledged data now fails the connection after
    # 10 s, and an idle one is probed after 10 s of silence. Options in
    # DATABASE_URL's query string take precedence.
    for _option, _value in {
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,  # milliseconds
    }.items():
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault(_option, _value)
if _postgres and PLACE_DB_POOL_SIZE:
    # Without a pool every database call from a consumer or hub (4 per new
    # socket, one a second per hub) opened a new PostgreSQL connection: most of
    # the connect phase's CPU and a tenth of an idle server's (bench/RESULTS.md).
    # Health checks make a connection cut by a database restart be replaced on
    # checkout instead of failing one request; a short timeout turns an outage
    # into prompt `unavailable` answers rather than 30 s waits.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(2, PLACE_DB_POOL_SIZE),
        "max_size": PLACE_DB_POOL_SIZE,
        "timeout": env_float("PLACE_DB_POOL_TIMEOUT", 5.0, positive=True),
    }

REDIS_URL = os.environ.get("REDIS_URL", "").strip()
if REDIS_URL and urlparse(REDIS_URL).scheme not in {"redis", "rediss", "unix"}:
    raise ImproperlyConfigured(
        f"REDIS_URL must be a redis://, rediss:// or unix:// URL, not {REDIS_URL!r}"
    )
if REDIS_URL:
    # Pub/sub, not the core layer, by measurement (bench/RESULTS.md, fan-out):
    # the only group traffic is one message per canvas per group commit per process to
    # the hubs, and there pub/sub's group_send took 0.30 ms against 0.87 ms and
    # delivered at p50 0.4 ms against 1.0 ms (4.1 ms and 19 ms for core on a
    # loaded machine, where its blocking pops also timed out). No capacity,
    # expiry or group expiry to set: nothing is queued for a dead process,
    # subscriptions live as long as the process, and a message lost on a Redis
    # restart or a slow subscriber is refilled from the database by the hub's
    # gap check (PLACE_GAP_TIMEOUT). Redis's own client-output-buffer-limit for pubsub
    # (default 32mb hard, 8mb/60 s soft) bounds a stalled process.
    #
    # Redis pub/sub ignores the database number: two deployments (or test and
    # benchmark stacks) on one Redis server but different databases would hear
    # each other's canvas groups. The prefix carries the database number; DB 0
    # keeps the library's default "asgi".
    _redis_db = urlparse(REDIS_URL).path.strip("/") or "0"
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": "asgi" if _redis_db == "0" else f"asgi-db{_redis_db}",
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 1000, "expiry": 30},
        }
    }

# The cache holds sign-up and log-in attempt counts; shared through Redis when
# there is one, so the limits hold across processes.
CACHES = {
    "default": (
        {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            # A Redis that does not answer costs a log-in one second, then
            # the counts fall back to this process (canvas/ratelimit.py).
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
# Admin dates to the second (placeproject/formats/en/formats.py).
FORMAT_MODULE_PATH = ["placeproject.formats"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
# Overridable so a test (or a deploy) can collect somewhere else.
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "servestatic.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
# Without collectstatic (development), serve straight from the finders.
SERVESTATIC_USE_FINDERS = DEBUG
SERVESTATIC_AUTOREFRESH = DEBUG

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
SESSION_COOKIE_AGE = 60 * 60 * 24 * 365

# HTTPS-only behaviour, for a site served over TLS (docs/deploy.md). Off by
# default, even with debug off: `daphne placeproject.asgi:application` on plain
# HTTP must still be a working site (secure cookies would never come back over
# HTTP, so nobody could log in, and the redirect would lead nowhere).
DJANGO_HTTPS = env_bool("DJANGO_HTTPS", False)
if DJANGO_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

# The game's own settings (docs/protocol.md lists them with their defaults).
PLACE_REQUIRE_LOGIN = env_bool("PLACE_REQUIRE_LOGIN", True)
PLACE_MESSAGE_RATE = env_float("PLACE_MESSAGE_RATE", 20)
PLACE_IP_LIMIT = env_int("PLACE_IP_LIMIT", 0)
PLACE_MAX_CONNECTIONS_PER_IP = env_int("PLACE_MAX_CONNECTIONS_PER_IP", 50)
PLACE_TRUSTED_PROXIES = env_networks("PLACE_TRUSTED_PROXIES", "")
# Behind a trusted proxy, its X-Forwarded-Proto says whether the browser used
# HTTPS (CSRF's origin check needs that, DJANGO_HTTPS or not). Believed only
# from PLACE_TRUSTED_PROXIES: canvas.middleware drops it from anyone else.
if PLACE_TRUSTED_PROXIES:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Seconds an account (or anonymous session) must exist before it may place.
PLACE_MIN_ACCOUNT_AGE = env_int("PLACE_MIN_ACCOUNT_AGE", 0)
# Sign-up and log-in attempts per IP address (per window below).
PLACE_SIGNUP_LIMIT = env_int("PLACE_SIGNUP_LIMIT", 5)
PLACE_SIGNUP_WINDOW = env_int("PLACE_SIGNUP_WINDOW", 3600, minimum=1)
PLACE_LOGIN_LIMIT = env_int("PLACE_LOGIN_LIMIT", 10)
PLACE_LOGIN_WINDOW = env_int("PLACE_LOGIN_WINDOW", 300, minimum=1)
# Broadcast tick: how often each process writes one frame to its sockets.
PLACE_BROADCAST_TICK = env_float("PLACE_BROADCAST_TICK", 0.1, positive=True)
# How long a hub waits for a missing seq before reading it from the database.
PLACE_GAP_TIMEOUT = env_float("PLACE_GAP_TIMEOUT", 1.0, positive=True)
# Connection rows not refreshed for this long belong to a dead process.
PLACE_CONNECTION_STALE_SECONDS = env_int(
    "PLACE_CONNECTION_STALE_SECONDS", 40, minimum=2
)
PLACE_HEARTBEAT_SECONDS = env_float("PLACE_HEARTBEAT_SECONDS", 15, positive=True)
# Group commit (canvas/ingest.py): a batch collects placements for this many
# seconds after its first one (1-3 ms costs little latency and lets PostgreSQL
# commit hundreds per fsync), up to this many per transaction.
PLACE_INGEST_WINDOW = env_float("PLACE_INGEST_WINDOW", 0.003)
PLACE_INGEST_MAX_BATCH = env_int("PLACE_INGEST_MAX_BATCH", 2000, minimum=1)
# The writer thread closes its database connection after this long idle.
PLACE_INGEST_IDLE_CLOSE = env_float("PLACE_INGEST_IDLE_CLOSE", 0.05)
# A socket whose unsent bytes exceed this has fallen behind: it is closed with
# code 4010 and the client reconnects and refetches the board (docs/protocol.md).
PLACE_SLOW_CLIENT_BYTES = env_int("PLACE_SLOW_CLIENT_BYTES", 1024 * 1024)
if PLACE_HEARTBEAT_SECONDS * 2 >= PLACE_CONNECTION_STALE_SECONDS:
    # One late or failed beat must not get live sockets' rows swept.
    raise ImproperlyConfigured(
        "PLACE_HEARTBEAT_SECONDS must be under half of"
        " PLACE_CONNECTION_STALE_SECONDS, or live sockets' rows are swept as stale"
    )
# Who may read /metrics besides staff users: comma-separated addresses/networks.
PLACE_METRICS_ALLOW = env_networks("PLACE_METRICS_ALLOW", "127.0.0.1,::1")

PLACE_LOG_LEVEL = os.environ.get("PLACE_LOG_LEVEL", "").strip().upper() or "INFO"
if PLACE_LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured(
        "PLACE_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL,"
        f" not {PLACE_LOG_LEVEL!r}"
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "filters": {"repeats_quieted": {"()": "canvas.logfilters.RepeatsQuieted"}},
    "loggers": {
        # While Redis is down, channels-redis logs a traceback a second and
        # every publish fails: the first of each is kept, then a line a minute.
        **{
            name: {"filters": ["repeats_quieted"]}
            for name in (
                "channels_redis.pubsub",
                "channels_redis.core",
                "canvas.broadcast",
                "canvas.hub",
            )
        },
        "canvas": {
            "handlers": ["console"],
            "level": PLACE_LOG_LEVEL,
            # daphne configures the root logger too; don't print every line twice.
            "propagate": False,
        },
    },
}
