"""Token buckets, flood detection and the cache-backed attempt counter."""

from canvas import ratelimit


def test_bucket_allows_a_burst_then_says_how_long_to_wait():
    bucket = ratelimit.TokenBucket(rate=5, burst=5)
    assert [bucket.take() for _ in range(5)] == [0.0] * 5
    wait = bucket.take()
    assert 0 < wait <= 0.2


def test_rate_zero_means_no_limit():
    bucket = ratelimit.TokenBucket(rate=0)
    assert all(bucket.take() == 0.0 for _ in range(1000))


def test_flood_is_sustained_refusals_within_the_window():
    flood = ratelimit.FloodDetector(limit=3, window=5)
    assert [flood.refused(), flood.refused(), flood.refused()] == [False, False, True]


def test_attempt_counter_refuses_past_the_limit():
    results = [ratelimit.hit("t:1.2.3.4", limit=3, window=60) for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert ratelimit.hit("t:5.6.7.8", limit=3, window=60)


def test_attempts_are_counted_per_process_while_the_shared_cache_is_down(
    monkeypatch,
):
    class Unreachable:
        def add(self, *args, **kwargs):
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")

    monkeypatch.setattr(ratelimit, "cache", Unreachable())
    results = [ratelimit.hit("down:1.2.3.4", limit=2, window=60) for _ in range(4)]
    assert results == [True, True, False, False]  # still a limit, no error
