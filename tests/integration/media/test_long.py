"""An hour of audio: the sample count is exact, so nothing drifts."""

from __future__ import annotations

from pathlib import Path

from kvs_ingest.media import SAMPLE_RATE, StreamDecoder
from tests.unit.media.corpus import browser_like_webm, encode_60ms_ogg, make_sine, ogg_opus_packets

PACKETS_PER_HOUR = 3600 * 1000 // 60


def test_an_hour_of_opus_gives_an_hour_of_samples(media_dir: Path) -> None:
    """3600 s of 60 ms Opus packets in browser-shaped WebM make 3600 x 16000 samples, less pre-skip."""
    head, packets = ogg_opus_packets(encode_60ms_ogg(make_sine(media_dir, 440.0, 2.0)))
    steady = packets[5:25]  # mid-signal packets, repeated
    data, _ = browser_like_webm(head, steady * (PACKETS_PER_HOUR // len(steady)))
    pre_skip_16k = int.from_bytes(head[10:12], "little") // 3
    decoder = StreamDecoder()
    count = 0
    offset = 0
    for i in range(0, len(data), 12_000):  # ~ 300 ms messages
        for pcm in decoder.feed(data[i : i + 12_000]):
            assert pcm.offset == offset
            offset = pcm.end
            count += pcm.samples
    count += sum(p.samples for p in decoder.flush())
    assert count == 3600 * SAMPLE_RATE - pre_skip_16k
