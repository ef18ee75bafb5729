"""Audio-rate limit: a token bucket measured in seconds of audio, fed the clock by its caller.

A speaker may burst to catch up after a stall (a MediaRecorder that buffered while the network
hiccupped), but may not stream sustained faster than real time: the bucket holds `burst`
seconds and refills at `rate` audio seconds per wall-clock second.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class AudioRateLimiter:
    """Token bucket; `consume` returns False once the client is over the limit."""

    burst: float = 10.0  # seconds of audio a client may send ahead of real time
    rate: float = 1.25  # sustained audio seconds per wall-clock second
    _tokens: float = field(init=False)
    _last: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.burst <= 0 or self.rate <= 0:
            raise ValueError("burst and rate must be > 0")
        self._tokens = self.burst

    def consume(self, audio_seconds: float, now: float) -> bool:
        """Take `audio_seconds` at monotonic time `now`; False when the bucket would go negative.

        The first call starts the clock, so time spent before the first audio (handshake,
        session set-up) does not count as credit.
        """
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= audio_seconds
        return self._tokens >= 0

    @property
    def tokens(self) -> float:
        return self._tokens
