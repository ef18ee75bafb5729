"""The comparisons every browser round trip must pass: what KVS holds (read back by
`kvs-ingest fetch`) against what the browser sent (decoded by ffmpeg) and the source audio."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tests.browser import audio
from tests.browser.demo import DemoRun, describe
from tests.browser.stack import Fetched

DURATION_TOLERANCE = 0.100  # s: the "within 100 ms of the recorded time"
PEAK_TOLERANCE_HZ = 5.0
# The page's "seconds sent" is wall time from recorder start to the last chunk; browsers encode
# a little less than that (measured: Chromium WebM < 50 ms, MP4 ~150 ms, Firefox 180-250 ms).
SENT_TOLERANCE = 0.5
MIN_RMS = 0.05  # the sources are ~0.2-0.4 RMS; silence or near-silence fails
MIN_FAITHFUL = 0.95  # KVS vs ffmpeg's decode of the same chunks
MIN_TONE_CORRELATION = 0.9  # measured 0.999
MIN_SPEECH_CORRELATION = 0.9  # measured 0.98 for Opus in WebM and MP4


@dataclass(frozen=True)
class Measured:
    """Numbers a round trip produced, for the failure message and the suite's report."""

    fetched_s: float
    browser_decoded_s: float
    sent_s: float
    persisted_s: float
    correlation: float | None  # with the source (median over 1 s windows)
    faithful: float  # with ffmpeg's decode of the chunks the page sent
    peaks: list[float]

    def __str__(self) -> str:
        corr = f"{self.correlation:.3f}" if self.correlation is not None else "-"
        return (
            f"fetched {self.fetched_s:.3f} s, ffmpeg {self.browser_decoded_s:.3f} s, "
            f"sent {self.sent_s:.3f} s, persisted {self.persisted_s:.3f} s, "
            f"corr {corr}, vs ffmpeg {self.faithful:.3f}, peaks {[round(p) for p in self.peaks]}"
        )


def check_stopped_cleanly(run: DemoRun) -> None:
    """Stop ended with close 1000 and the page says so, with no error shown."""
    assert run.stop_code == 1000, describe(run)
    assert run.shown["state"] == "stopped", describe(run)
    assert run.shown["error"] == "", describe(run)
    assert run.chunks, "the page sent no chunks"


def browser_decoded(run: DemoRun) -> list[np.ndarray]:
    """Each recorder's stream as ffmpeg decodes it: the outside measure of what was recorded."""
    return [audio.ffmpeg_decode(stream) for stream in run.recordings()]


def check_round_trip(
    run: DemoRun,
    fetched: Fetched,
    *,
    reference: np.ndarray,
    tones: tuple[float, ...] = (),
    min_correlation: float = MIN_TONE_CORRELATION,
) -> Measured:
    """KVS holds what the browser recorded: same length (±100 ms) and waveform as ffmpeg's
    decode of the chunks the page sent, not silent, the tones at the right frequencies, and the
    source's waveform (correlation at the best lag, per second)."""
    check_stopped_cleanly(run)
    decoded = browser_decoded(run)
    expected = sum(len(d) for d in decoded) / audio.RATE
    skip = audio.RATE // 10  # the encoder's first few ms ramp up
    body = fetched.samples[skip:]
    peaks = audio.spectral_peaks(body, len(tones)) if tones else []
    correlation = audio.windowed_correlation(body, reference)
    faithful = audio.aligned_correlation(fetched.samples, np.concatenate(decoded))
    measured = Measured(
        fetched.seconds,
        expected,
        run.sent_seconds,
        run.persisted_seconds,
        correlation,
        faithful,
        peaks,
    )
    note = f"{measured}; {describe(run)}"
    assert abs(fetched.seconds - expected) <= DURATION_TOLERANCE, note
    assert abs(fetched.seconds - run.persisted_seconds) <= DURATION_TOLERANCE, note
    assert run.shown["persisted"] == f"{run.persisted_seconds:.1f}", note
    assert run.shown["sent"] == f"{run.sent_seconds:.1f}", note
    assert abs(run.sent_seconds - fetched.seconds) <= SENT_TOLERANCE, note
    assert audio.rms(body) >= MIN_RMS, f"silent: rms {audio.rms(body):.4f}; {note}"
    for want, got in zip(tones, peaks, strict=True):
        assert abs(want - got) <= PEAK_TOLERANCE_HZ, note
    assert faithful >= MIN_FAITHFUL, note
    assert correlation >= min_correlation, note
    return measured
