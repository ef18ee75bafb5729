"""A session's timeline (sans-I/O): where a speaker's samples go and how far the clocks drift.

Absolute time comes from sample counts (`FragmentWriter` does the arithmetic); this class decides
the anchors. A speaker starts at the wall-clock time it attached, but never before the end of
what the session already wrote, so timecodes strictly increase across speakers; the difference
is an explicit gap. While a speaker streams, the lag of the sample clock behind the wall clock
is measured at each write; its minimum over a fragment (jitter removed) minus the same minimum
over the speaker's first fragment is the drift. When the sample clock falls behind by more than
`tolerance_ms`, the next fragment starts up to `max_step_ms` later: corrected only forward, at
fragment boundaries, within a bound. A sample clock running ahead (audio sent faster than real
time) is measured and left alone: moving back would break monotonic timecodes.

Time a write spent waiting (the ledger full, so the socket was not read) or a backlog that built
up between two writes is not drift: a slow clock adds lag a few ms per second, a stall adds it all
at once. Either starts the measurement afresh (`rebase`): the next steady fragment is the new
baseline, so a stall never becomes a forward "correction" that leaves a hole inside continuous
audio.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Placement:
    anchor_ms: int  # where the speaker's first sample goes
    gap_ms: int  # time left empty before it (0: continues the session's audio)


class Timeline:
    def __init__(
        self, *, tolerance_ms: int = 200, max_step_ms: int = 100, stall_ms: int = 1000
    ) -> None:
        if tolerance_ms < 0 or max_step_ms < 0 or stall_ms <= 0:
            raise ValueError("negative drift bound")
        self._tolerance = tolerance_ms
        self._max_step = max_step_ms
        self._stall = stall_ms
        self._baseline: int | None = None
        self._window_min: int | None = None
        self._last_lag: int | None = None
        self.rebases = 0  # measurements started afresh after a stall
        self.drift_ms: int | None = None  # last measured drift (None before a second boundary)
        self.corrected_ms = 0  # total forward corrections

    def attach(self, now_ms: int, end_ms: int) -> Placement:
        """A speaker starts: place it at `now_ms` unless the session already wrote past that."""
        self._baseline = None
        self._window_min = None
        self._last_lag = None
        self.drift_ms = None
        anchor = max(now_ms, end_ms)
        return Placement(anchor, anchor - end_ms)

    def observe(self, now_ms: int, sample_end_ms: int) -> None:
        """A write ended the sample clock at `sample_end_ms` while the wall clock read `now_ms`."""
        lag = now_ms - sample_end_ms
        last, self._last_lag = self._last_lag, lag
        if last is not None and lag - last > self._stall:
            # Audio stopped arriving for longer than a slow clock could explain: a stall.
            self.rebase()
            return
        if self._window_min is None or lag < self._window_min:
            self._window_min = lag

    def rebase(self) -> None:
        """Lag built up by a stall or a backlog: forget the baseline and the window in progress;
        the next full window after this becomes the baseline."""
        self._baseline = None
        self._window_min = None
        self._last_lag = None
        self.drift_ms = None
        self.rebases += 1

    def boundary(self) -> int:
        """A fragment ended: measure drift; return how many ms to move the next fragment on."""
        lag, self._window_min = self._window_min, None
        if lag is None:
            return 0
        if self._baseline is None:
            self._baseline = lag
            return 0
        drift = lag - self._baseline
        self.drift_ms = drift
        if drift <= self._tolerance:
            return 0
        step = min(drift - self._tolerance // 2, self._max_step)
        self.corrected_ms += step
        return step
