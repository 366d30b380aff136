"""Token buckets for per-socket message rates, and a cache-backed limiter for forms."""

import logging
import time

from django.core.cache import cache
from django.core.cache.backends.locmem import LocMemCache

log = logging.getLogger("canvas.ratelimit")
# Where attempts are counted while the shared cache is unreachable.
_fallback = LocMemCache("place-ratelimit-fallback", {})


class TokenBucket:
    """`rate` tokens a second, up to `burst`; each message takes one."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.tokens = self.burst
        self.updated = time.monotonic()

    def take(self) -> float:
        """Take a token; return 0.0 if allowed, else seconds until one is free."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class FloodDetector:
    """Counts refused messages; too many within a window means close the socket."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.refusals: list[float] = []

    def refused(self) -> bool:
        """Record a refusal; True when the flood is sustained."""
        now = time.monotonic()
        self.refusals = [t for t in self.refusals if now - t < self.window]
        self.refusals.append(now)
        return len(self.refusals) >= self.limit


def hit(key: str, *, limit: int, window: int) -> bool:
    """Count one attempt under `key`; False once `limit` is passed in `window` s.

    Uses Django's cache, so with a shared cache (Redis) the limit holds across
    processes; with the default local-memory cache it is per process.
    """
    if limit <= 0:
        return True
    try:
        count = _count(cache, key, window)
    except Exception:
        # The shared cache (Redis) is unreachable: count in this process
        # rather than turn every log-in and sign-up into an error page.
        log.warning("rate-limit cache unavailable; counting per process")
        count = _count(_fallback, key, window)
    return count <= limit


def _count(store, key: str, window: int) -> int:
    store.add(key, 0, timeout=window)
    try:
        return store.incr(key)
    except ValueError:  # expired between add and incr
        store.set(key, 1, timeout=window)
        return 1
