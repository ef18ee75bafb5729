"""The committed MediaRecorder corpus (tests/data/browser/, `make fixtures`) is what its
meta.json says: every chunk present, ffmpeg decodes each recorder's stream, the tones are there.
No browser needed: this guards the bytes other suites parametrize over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.browser import audio

CORPUS = Path(__file__).resolve().parents[1] / "data" / "browser"
RECORDINGS = sorted(p.parent for p in CORPUS.glob("*/*/meta.json"))


def test_corpus_covers_both_browsers_and_the_required_types() -> None:
    """Each required type of each browser at 250 and 1000 ms, restarts, all under 3 MB."""
    metas = [json.loads((d / "meta.json").read_text()) for d in RECORDINGS]
    seen = {(m["browser"], m["mimeType"], m["timeslice_ms"]) for m in metas}
    for browser, mime in [
        ("chromium", "audio/webm;codecs=opus"),
        ("chromium", "audio/webm;codecs=pcm"),
        ("chromium", "audio/mp4"),
        ("chromium", "audio/x-matroska;codecs=opus"),
        ("firefox", "audio/ogg;codecs=opus"),
        ("firefox", "audio/webm;codecs=opus"),
    ]:
        assert {(browser, mime, 250), (browser, mime, 1000)} <= seen, (browser, mime)
    restarted = {m["browser"] for m in metas if m["restarted_at_chunk"] is not None}
    assert restarted == {"chromium", "firefox"}
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    assert total < 3_000_000, f"corpus grew to {total} bytes"


@pytest.mark.parametrize("folder", RECORDINGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recording_matches_its_meta(folder: Path) -> None:
    """All chunks present; ffmpeg decodes each recorder to about its length, tones as stated."""
    meta = json.loads((folder / "meta.json").read_text())
    chunks = sorted(folder.glob("chunk-*.bin"))
    assert [c.name for c in chunks] == [f"chunk-{i:04d}.bin" for i in range(meta["chunks"])]
    assert sum(c.stat().st_size for c in chunks) == meta["bytes"]
    cut = meta["restarted_at_chunk"]
    parts = [chunks] if cut is None else [chunks[:cut], chunks[cut:]]
    if cut is not None:
        assert chunks[cut].read_bytes()[:4] == chunks[0].read_bytes()[:4], "no new header"
    decoded = [audio.ffmpeg_decode(b"".join(c.read_bytes() for c in part)) for part in parts]
    seconds = sum(len(d) for d in decoded) / audio.RATE
    # The browsers lose up to ~0.4 s at the start (Firefox's fake device starts late).
    assert meta["recorded_ms"] / 1000 - 0.5 <= seconds <= meta["recorded_ms"] / 1000 + 0.1
    freqs = meta["source"].get("freqs")
    for samples in decoded:
        body = samples[audio.RATE // 10 :]
        assert audio.rms(body) > 0.02, "silent"
        if freqs:
            peaks = audio.spectral_peaks(body, len(freqs))
            assert all(abs(p - f) <= 10 for p, f in zip(peaks, sorted(freqs), strict=True)), peaks
