"""AudioRateLimiter: bursts allowed, sustained faster-than-real-time refused."""

from __future__ import annotations

from kvs_ingest.server.ratelimit import AudioRateLimiter


def test_real_time_streams_forever() -> None:
    """One second of audio per second never runs the bucket dry."""
    lim = AudioRateLimiter(burst=10, rate=1.25)
    assert all(lim.consume(0.25, t * 0.25) for t in range(4 * 3600))


def test_burst_after_a_stall_is_allowed() -> None:
    """After 8 s of silence a client may send 8 s of buffered audio at once."""
    lim = AudioRateLimiter(burst=10, rate=1.25)
    assert lim.consume(0.25, 0.0)
    assert lim.consume(8.0, 8.0)


def test_sustained_double_speed_is_refused_within_bounds() -> None:
    """At 2x real time the bucket (10 s, 1.25x) empties after about 10/0.75 = 13.3 s."""
    lim = AudioRateLimiter(burst=10, rate=1.25)
    t = 0.0
    while lim.consume(0.5, t):
        t += 0.25
    assert 12.5 <= t <= 14.0
