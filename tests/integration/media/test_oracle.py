"""The pipeline against ffmpeg: every format, ffmpeg-made and browser-recorded, decodes to what
`ffmpeg -i <whole file> -ar 16000 -ac 1 -f s16le` makes of the concatenated chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kvs_ingest.media import SAMPLE_RATE, StreamDecoder
from tests.unit.media.corpus import (
    Stream,
    best_alignment,
    browser_streams,
    oracle_pcm,
    peak_frequency,
)

FFMPEG_STREAMS = [
    "webm-opus",
    "ogg-opus",
    "mp4-aac",
    "mp4-opus",
    "mka-f32",
    "mka-s16-44k",
    "raw-s16-22k",
    "chrome-like-webm",
    "firefox-like-webm",
    "laced-webm",
    "restarted-webm",
    "restarted-ogg",
    "restarted-mp4",
]
BROWSER = browser_streams()


def decode_chunks(stream: Stream) -> np.ndarray:
    decoder = StreamDecoder(stream.format if stream.declared else None, **stream.declared)
    pieces = []
    for chunk in stream.chunks:
        pieces += decoder.feed(chunk)
    pieces += decoder.flush()
    expected = 0
    for pcm in pieces:
        assert pcm.offset == expected
        expected = pcm.end
    assert decoder.segments == len(stream.restarts) + 1
    return np.frombuffer(b"".join(p.data for p in pieces), np.int16)


def check_against_oracle(stream: Stream, tmp: Path) -> None:
    ours = decode_chunks(stream)
    oracle = oracle_pcm(stream, tmp)
    segments = len(stream.restarts) + 1
    assert abs(len(ours) - len(oracle)) <= stream.frame_16k * segments, (len(ours), len(oracle))
    lag, corr = best_alignment(ours, oracle)
    assert corr >= 0.99, (lag, corr)
    assert abs(lag) <= stream.frame_16k


@pytest.mark.parametrize("name", FFMPEG_STREAMS)
def test_ffmpeg_made_stream_matches_ffmpeg(
    name: str, ffmpeg_streams: dict[str, Stream], tmp_path: Path
) -> None:
    """An ffmpeg-made stream in chunks decodes like ffmpeg decodes the whole file."""
    check_against_oracle(ffmpeg_streams[name], tmp_path)


@pytest.mark.skipif(not BROWSER, reason="no browser corpus under tests/data/browser yet")
@pytest.mark.parametrize("stream", BROWSER, ids=[s.name for s in BROWSER])
def test_browser_recording_matches_ffmpeg(stream: Stream, tmp_path: Path) -> None:
    """A real browser's MediaRecorder chunks decode like ffmpeg decodes their concatenation."""
    check_against_oracle(stream, tmp_path)


SINES = [s for s in BROWSER if (s.meta.get("source") or {}).get("kind") == "sine"]  # type: ignore[union-attr]


@pytest.mark.skipif(not SINES, reason="no browser sine recordings under tests/data/browser yet")
@pytest.mark.parametrize("stream", SINES, ids=[s.name for s in SINES])
def test_browser_sine_comes_out_at_its_frequency(stream: Stream) -> None:
    """A sine a real browser recorded comes out of the pipeline at its frequency, at 16 kHz."""
    freq = float(stream.meta["source"]["freqs"][0])  # type: ignore[index]
    pcm = decode_chunks(stream)
    steady = pcm[SAMPLE_RATE // 4 : -SAMPLE_RATE // 8]  # past the recorder's start-up
    assert abs(peak_frequency(steady) - freq) < 5.0
    assert np.abs(steady).max() > 1000  # a tone, not silence
