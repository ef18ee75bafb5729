"""StreamDecoder: chunking never changes the PCM, offsets are contiguous, counts are exact, bad
input raises MediaError and leaves the decoder unusable."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs_ingest.media import SAMPLE_RATE, MediaError, Pcm, StreamDecoder
from tests.unit.media.corpus import (
    OPUS_FRAME_16K,
    Stream,
    browser_like_webm,
    browser_streams,
    encode,
    encode_60ms_ogg,
    make_sine,
    ogg_opus_packets,
    peak_frequency,
    run_ffmpeg,
)

FORMAT_STREAMS = [
    "webm-opus",
    "ogg-opus",
    "mp4-aac",
    "mp4-opus",
    "mka-f32",
    "raw-s16-22k",
    "firefox-like-webm",
    "laced-webm",
    "restarted-webm",
    "restarted-ogg",
    "restarted-mp4",
]
SMALL_STREAMS = ["chrome-like-webm", "ogg-opus", "mp4-opus", "mp4-aac"]


def new_decoder(stream: Stream) -> StreamDecoder:
    return StreamDecoder(stream.format if stream.declared else None, **stream.declared)


def decode(stream: Stream, pieces: list[bytes]) -> list[Pcm]:
    decoder = new_decoder(stream)
    out: list[Pcm] = []
    for piece in pieces:
        out += decoder.feed(piece)
    out += decoder.flush()
    return out


def joined(pcm: list[Pcm]) -> bytes:
    expected = 0
    for piece in pcm:
        assert piece.offset == expected, "offsets must be contiguous"
        expected = piece.end
    return b"".join(p.data for p in pcm)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *sorted({p % (len(data) + 1) for p in points}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.fixture(scope="module")
def whole_pcm(ffmpeg_streams: dict[str, Stream]) -> dict[str, bytes]:
    return {name: joined(decode(s, [s.data])) for name, s in ffmpeg_streams.items()}


@pytest.mark.parametrize("name", FORMAT_STREAMS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.lists(st.integers(min_value=0, max_value=1 << 24), max_size=60), data=st.data())
def test_random_cuts_give_the_same_pcm(
    name: str,
    points: list[int],
    data: st.DataObject,
    ffmpeg_streams: dict[str, Stream],
    whole_pcm: dict[str, bytes],
) -> None:
    """Chunks cut anywhere (runs of 1-byte pieces included) decode to the whole stream's PCM."""
    stream = ffmpeg_streams[name]
    raw = stream.data
    start = data.draw(st.integers(0, max(0, len(raw) - 40)), label="one-byte run at")
    points = [*points, *range(start, min(len(raw), start + 40))]
    assert joined(decode(stream, cut(raw, points))) == whole_pcm[name]


BROWSER = browser_streams()


@pytest.mark.skipif(not BROWSER, reason="no browser corpus under tests/data/browser yet")
@pytest.mark.parametrize("stream", BROWSER, ids=[s.name for s in BROWSER])
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.lists(st.integers(min_value=0, max_value=1 << 24), max_size=40), data=st.data())
def test_browser_recording_cut_anywhere_gives_the_same_pcm(
    stream: Stream, points: list[int], data: st.DataObject
) -> None:
    """A browser recording re-cut at random offsets (1-byte runs included) decodes the same."""
    raw = stream.data
    whole = joined(decode(stream, [raw]))
    assert joined(decode(stream, stream.chunks)) == whole  # the browser's own cuts
    start = data.draw(st.integers(0, max(0, len(raw) - 40)), label="one-byte run at")
    points = [*points, *range(start, min(len(raw), start + 40))]
    assert joined(decode(stream, cut(raw, points))) == whole


@pytest.mark.parametrize("name", SMALL_STREAMS)
def test_byte_by_byte_gives_the_same_pcm(
    name: str, ffmpeg_streams: dict[str, Stream], whole_pcm: dict[str, bytes]
) -> None:
    """Feeding one byte at a time decodes to exactly the whole stream's PCM."""
    stream = ffmpeg_streams[name]
    raw = stream.data
    assert joined(decode(stream, [raw[i : i + 1] for i in range(len(raw))])) == whole_pcm[name]


@pytest.mark.parametrize("name", FORMAT_STREAMS)
def test_feed_returns_pcm_before_the_end(name: str, ffmpeg_streams: dict[str, Stream]) -> None:
    """Audio comes out while the stream is still arriving, not only at flush."""
    stream = ffmpeg_streams[name]
    decoder = new_decoder(stream)
    early = [
        p for chunk in stream.chunks[: max(1, len(stream.chunks) // 2)] for p in decoder.feed(chunk)
    ]
    assert sum(p.samples for p in early) > SAMPLE_RATE // 4


@pytest.mark.parametrize("name", ["restarted-webm", "restarted-ogg", "restarted-mp4"])
def test_restarted_recorder_continues_the_count(
    name: str, ffmpeg_streams: dict[str, Stream], whole_pcm: dict[str, bytes]
) -> None:
    """A new recorder mid-socket starts a new segment; offsets continue across it."""
    stream = ffmpeg_streams[name]
    decoder = new_decoder(stream)
    pcm: list[Pcm] = []
    for chunk in stream.chunks:
        pcm += decoder.feed(chunk)
    pcm += decoder.flush()
    assert decoder.segments == 2
    first = joined(decode(stream, stream.chunks[: stream.restarts[0]]))
    second = joined(decode(stream, stream.chunks[stream.restarts[0] :]))
    assert joined(pcm) == first + second


@pytest.fixture(scope="module")
def sine_streams(media_dir: Path) -> dict[str, Stream]:
    src = make_sine(media_dir, 1000.0, 2.0)
    head, packets = ogg_opus_packets(encode_60ms_ogg(src))
    chrome, _ = browser_like_webm(head, packets)
    raw44 = run_ffmpeg("-i", str(src), "-f", "s16le", "-ar", "44100", "-ac", "1", "-")
    return {
        "webm-opus": Stream("webm-opus", [chrome], "webm"),
        "ogg-opus": Stream("ogg-opus", [encode(src, "ogg-opus")], "ogg"),
        "mp4-aac": Stream("mp4-aac", [encode(src, "mp4-aac")], "mp4"),
        "mka-f32": Stream("mka-f32", [encode(src, "mka-f32")], "webm"),
        "raw-44k": Stream("raw-44k", [raw44], "pcm_s16le", {"rate": 44100, "channels": 1}),
    }


@pytest.mark.parametrize("name", ["webm-opus", "ogg-opus", "mp4-aac", "mka-f32", "raw-44k"])
def test_1khz_sine_comes_out_at_1khz(name: str, sine_streams: dict[str, Stream]) -> None:
    """A 1 kHz sine in any format has its spectral peak at 1 kHz at 16 kHz output."""
    pcm = np.frombuffer(joined(decode(sine_streams[name], sine_streams[name].chunks)), np.int16)
    assert abs(peak_frequency(pcm[2000:-2000]) - 1000.0) < 5.0
    assert np.abs(pcm[2000:-2000]).max() > 1000  # not silence


@pytest.mark.parametrize("name", ["webm-opus", "ogg-opus", "mp4-aac", "mka-f32", "raw-44k"])
def test_two_seconds_give_32000_samples(name: str, sine_streams: dict[str, Stream]) -> None:
    """Two seconds of input make 2 x 16000 samples, within one codec frame."""
    samples = len(joined(decode(sine_streams[name], sine_streams[name].chunks))) // 2
    assert abs(samples - 2 * SAMPLE_RATE) <= OPUS_FRAME_16K


def test_raw_pcm_keeps_a_split_sample_frame() -> None:
    """Raw stereo PCM split inside a sample frame loses nothing and shifts nothing."""
    t = np.arange(4410)
    left = (8000 * np.sin(2 * np.pi * 1000 * t / 44100)).astype("<i2")
    stereo = np.column_stack([left, left]).tobytes()
    decoder = StreamDecoder("pcm_s16le", rate=44100, channels=2)
    pcm = []
    for i in range(0, len(stereo), 333):  # 333: odd, so frames split everywhere
        pcm += decoder.feed(stereo[i : i + 333])
    pcm += decoder.flush()
    out = np.frombuffer(joined(pcm), np.int16)
    assert abs(len(out) - 1600) <= 1
    assert abs(peak_frequency(out) - 1000.0) < 12


def test_raw_pcm_ending_inside_a_frame_is_an_error() -> None:
    """Raw PCM that stops in the middle of a sample frame is reported at flush."""
    decoder = StreamDecoder("pcm_s16le", rate=16000, channels=2)
    decoder.feed(b"\x00" * 6)
    with pytest.raises(MediaError, match="inside a sample frame"):
        decoder.flush()


def test_empty_stream_flushes_to_nothing() -> None:
    """A socket that sent no media flushes cleanly to no PCM."""
    assert StreamDecoder().flush() == []


def test_declared_format_is_checked() -> None:
    """An unknown declared format, or raw PCM without a rate, is refused at once."""
    with pytest.raises(MediaError, match="unsupported format"):
        StreamDecoder("wav")
    with pytest.raises(MediaError, match="needs a rate"):
        StreamDecoder("pcm_s16le")
    with pytest.raises(MediaError, match="rate 4 outside"):
        StreamDecoder("pcm_s16le", rate=4).feed(b"\x00\x00")


def test_declared_format_wins_over_sniffing(ffmpeg_streams: dict[str, Stream]) -> None:
    """A client that declares webm but sends Ogg gets a MediaError, not a guess."""
    with pytest.raises(MediaError):
        StreamDecoder("webm").feed(ffmpeg_streams["ogg-opus"].data)


def test_decoder_is_unusable_after_an_error() -> None:
    """After a MediaError every further call raises MediaError too."""
    decoder = StreamDecoder()
    with pytest.raises(MediaError):
        decoder.feed(b"GIF89a not audio at all")
    with pytest.raises(MediaError, match="already failed"):
        decoder.feed(b"OggS")
    with pytest.raises(MediaError, match="already failed"):
        decoder.flush()


def test_flush_ends_the_stream(ffmpeg_streams: dict[str, Stream]) -> None:
    """After flush the decoder refuses more input instead of silently restarting."""
    decoder = StreamDecoder()
    decoder.feed(ffmpeg_streams["ogg-opus"].data)
    decoder.flush()
    with pytest.raises(MediaError, match="already flushed"):
        decoder.feed(b"OggS")


def test_pcm_refuses_impossible_values() -> None:
    """Pcm cannot hold a negative offset or half a sample."""
    with pytest.raises(ValueError):
        Pcm(-1, b"")
    with pytest.raises(ValueError):
        Pcm(0, b"\x00")
    assert Pcm(10, b"\x00" * 8).end == 14


@pytest.mark.parametrize("name", ["webm-opus", "mp4-aac", "mka-f32", "raw-s16-22k"])
def test_no_thread_per_decoder(name: str, ffmpeg_streams: dict[str, Stream]) -> None:
    """Fifty live decoders add no threads: FFmpeg's codec and filter pools stay single-threaded."""
    import psutil

    stream = ffmpeg_streams[name]
    process = psutil.Process()
    before = process.num_threads()
    decoders = [new_decoder(stream) for _ in range(50)]
    for decoder in decoders:
        assert decoder.feed(stream.data[:100_000])
    assert process.num_threads() <= before


@pytest.mark.parametrize("name", ["webm-opus", "ogg-opus", "mp4-opus"])
def test_truncated_stream_hands_over_its_tail(
    name: str, ffmpeg_streams: dict[str, Stream], whole_pcm: dict[str, bytes]
) -> None:
    """A stream cut inside its last packet raises at flush, with the codec's tail on the error."""
    stream = ffmpeg_streams[name]
    decoder = new_decoder(stream)
    fed = decoder.feed(stream.data[:-3])
    with pytest.raises(MediaError) as caught:
        decoder.flush()
    tail = caught.value.pcm
    assert tail and tail[0].offset == fed[-1].end
    got = joined(fed + tail)
    # Identical up to the resampler's flush, which pads the early end with silence.
    assert whole_pcm[name].startswith(got[:-200])
    assert len(whole_pcm[name]) - len(got) <= 2 * 2 * OPUS_FRAME_16K  # at most the lost packet
