"""Timeline: placement of speakers, gaps, drift measured and corrected forward within bounds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvs_ingest.sessions.timeline import Timeline


def test_speaker_starts_at_wall_clock_after_a_gap() -> None:
    """A speaker attaching after the session's end is placed at the wall clock: an explicit gap."""
    timeline = Timeline()
    placement = timeline.attach(now_ms=10_000, end_ms=7_000)
    assert (placement.anchor_ms, placement.gap_ms) == (10_000, 3_000)


def test_speaker_never_starts_before_what_was_written() -> None:
    """When the session already wrote past the wall clock, the speaker continues at its end."""
    placement = Timeline().attach(now_ms=10_000, end_ms=12_500)
    assert (placement.anchor_ms, placement.gap_ms) == (12_500, 0)


def simulate(rate_factor: float, fragments: int, timeline: Timeline) -> list[int]:
    """A speaker whose audio clock runs at `rate_factor` of the wall clock, 250 ms chunks, with
    50 ms of jitter; returns the corrections at each 1 s fragment boundary."""
    sample_end = 0
    steps = []
    for n in range(1, fragments * 4 + 1):
        wall = int(n * 250 / rate_factor) + (50 if n % 3 else 0)
        sample_end += 250
        timeline.observe(wall, sample_end)
        if n % 4 == 0:
            step = timeline.boundary()
            sample_end += step
            steps.append(step)
    return steps


def test_steady_clock_is_never_corrected() -> None:
    """A sample clock that keeps up with the wall clock (plus jitter) gets no correction."""
    timeline = Timeline(tolerance_ms=200, max_step_ms=100)
    assert simulate(1.0, 60, timeline) == [0] * 60
    assert abs(timeline.drift_ms or 0) <= 60


def test_slow_clock_is_corrected_forward_in_bounded_steps() -> None:
    """A clock 2 % slow falls behind; corrections are forward, <= max step, keep drift bounded."""
    timeline = Timeline(tolerance_ms=200, max_step_ms=100)
    steps = simulate(0.98, 120, timeline)
    assert any(steps) and all(0 <= s <= 100 for s in steps)
    assert timeline.drift_ms is not None and timeline.drift_ms <= 300
    assert timeline.corrected_ms == sum(steps)


def test_fast_clock_is_measured_not_corrected() -> None:
    """Audio arriving faster than real time shows negative drift and is never moved back."""
    timeline = Timeline()
    steps = simulate(3.0, 20, timeline)
    assert steps == [0] * 20
    assert timeline.drift_ms is not None and timeline.drift_ms < -1000


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-2000, 5000), min_size=2, max_size=40))
def test_corrections_are_never_negative_or_over_the_bound(lags: list[int]) -> None:
    """Whatever the lags, each correction is within [0, max_step]."""
    timeline = Timeline(tolerance_ms=100, max_step_ms=80)
    for i, lag in enumerate(lags):
        timeline.observe(10_000 + i * 1000 + lag, 10_000 + i * 1000)
        assert 0 <= timeline.boundary() <= 80


def stalled(timeline: Timeline, *, stall_at: int, stall_ms: int, waited: bool) -> list[int]:
    """A real-time speaker in 250 ms chunks whose socket stops being read for `stall_ms` before
    write `stall_at` (the ledger was full); the backlog then arrives at 4x until caught up.
    Returns the corrections at each 1 s fragment boundary."""
    wall = sample_end = 0
    behind = 0  # ms of audio the speaker sent that the server has not read yet
    steps = []
    for n in range(1, 121):
        if n == stall_at:
            wall += stall_ms
            behind += stall_ms
            if waited:
                timeline.rebase()
        if behind > 0:
            wall += 62  # the backlog is read four times faster than real time
            behind -= 188
        else:
            wall += 250
        sample_end += 250
        if not (waited and n == stall_at):
            timeline.observe(wall, sample_end)
        if n % 4 == 0:
            step = timeline.boundary()
            sample_end += step
            steps.append(step)
    return steps


def test_a_write_that_waited_for_room_is_not_drift() -> None:
    """A 30 s back-pressure stall, reported by the session as a wait, never becomes a forward
    correction (which would leave a hole inside continuous audio)."""
    timeline = Timeline(tolerance_ms=200, max_step_ms=100)
    assert stalled(timeline, stall_at=21, stall_ms=30_000, waited=True) == [0] * 30
    assert timeline.corrected_ms == 0 and timeline.rebases == 1


def test_a_stall_between_writes_is_not_drift() -> None:
    """A stall nobody reported (the lag jumps by seconds between two writes) starts the
    measurement afresh instead of being corrected."""
    timeline = Timeline(tolerance_ms=200, max_step_ms=100)
    assert stalled(timeline, stall_at=21, stall_ms=5_000, waited=False) == [0] * 30
    assert timeline.rebases == 1


def test_slow_clock_after_a_stall_is_still_corrected() -> None:
    """After a rebase, a clock 2 % slow is measured from the new baseline and corrected."""
    timeline = Timeline(tolerance_ms=200, max_step_ms=100)
    timeline.observe(5_000, 0)
    timeline.rebase()
    steps = simulate(0.98, 120, timeline)
    assert any(steps) and all(0 <= s <= 100 for s in steps)
    assert timeline.drift_ms is not None and timeline.drift_ms <= 300
