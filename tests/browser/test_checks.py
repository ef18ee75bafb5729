"""The round-trip checks can fail: fed a real Chromium recording from the corpus and a "fetched"
session that is silent, too short, or other audio, `check_round_trip` refuses each. No browser."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.browser import audio
from tests.browser.checks import check_round_trip
from tests.browser.demo import Chunk, DemoRun
from tests.browser.stack import Fetched

RECORDING = Path(__file__).resolve().parents[1] / "data/browser/chromium/webm-opus-250-two-tone"


@pytest.fixture(scope="module")
def recorded() -> tuple[DemoRun, Fetched, np.ndarray]:
    """A corpus recording as if the page had sent it, and KVS held exactly ffmpeg's decode."""
    meta = json.loads((RECORDING / "meta.json").read_text())
    chunks = [
        Chunk(1, 1, i, (RECORDING / f"chunk-{i:04d}.bin").read_bytes())
        for i in range(meta["chunks"])
    ]
    decoded = audio.ffmpeg_decode(b"".join(c.data for c in chunks))
    seconds = len(decoded) / audio.RATE
    shown = {
        "state": "stopped",
        "error": "",
        "persisted": f"{seconds:.1f}",
        "sent": f"{seconds:.1f}",
    }
    run = DemoRun("s", 1000, shown, seconds, seconds, chunks, [])
    fetched = Fetched(decoded, [], 3, 0, 0, "")
    t = np.arange(6 * audio.RATE) / audio.RATE
    reference = sum(0.3 * np.sin(2 * np.pi * f * t) for f in audio.TWO_TONE)
    return run, fetched, reference


def test_the_faithful_copy_passes(recorded: tuple[DemoRun, Fetched, np.ndarray]) -> None:
    """ffmpeg's own decode of the chunks passes every check (the control)."""
    run, fetched, reference = recorded
    measured = check_round_trip(run, fetched, reference=reference, tones=audio.TWO_TONE)
    assert measured.correlation is not None and measured.correlation > 0.99


@pytest.mark.parametrize("fault", ["silent", "short", "pitch", "other-audio", "not-stopped"])
def test_a_bad_copy_fails(recorded: tuple[DemoRun, Fetched, np.ndarray], fault: str) -> None:
    """Silence, 150 ms missing, a wrong-rate pitch, noise, or a stop without 1000: each fails."""
    run, fetched, reference = recorded
    x = fetched.samples
    if fault == "silent":
        fetched = replace(fetched, samples=np.zeros_like(x))
    elif fault == "short":
        fetched = replace(fetched, samples=x[: len(x) - audio.RATE * 15 // 100])
    elif fault == "pitch":  # 44.1 kHz taken for 48 kHz, the classic wrong-rate bug; same length
        idx = np.arange(len(x)) * 44100 / 48000
        fetched = replace(fetched, samples=np.interp(idx, np.arange(len(x)), x))
    elif fault == "other-audio":
        noise = np.random.default_rng(7).normal(0, 0.2, len(x))
        fetched = replace(fetched, samples=noise)
    else:
        run = replace(run, stop_code=1006)
    with pytest.raises(AssertionError):
        check_round_trip(run, fetched, reference=reference, tones=audio.TWO_TONE)
