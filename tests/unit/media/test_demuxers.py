"""The demuxers on their own: packets and set-up as ffprobe sees them, whole or byte by byte,
and each kind of bad input named in its MediaError."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from kvs_ingest.media import MediaError, StreamDecoder
from kvs_ingest.media.events import AudioPacket, CodecSetup, DemuxEvent
from kvs_ingest.media.mp4 import Mp4Demuxer
from kvs_ingest.media.ogg import OggDemuxer
from kvs_ingest.media.opus import packet_samples
from kvs_ingest.media.sniff import sniff
from kvs_ingest.media.webm import WebmDemuxer
from kvs_ingest.mkv import writer as w
from kvs_ingest.mkv.ids import ID
from tests.unit.media.corpus import TIME_FACTOR, Stream, run_ffmpeg

Demuxer = WebmDemuxer | OggDemuxer | Mp4Demuxer
DEMUXERS = {"webm": WebmDemuxer, "ogg": OggDemuxer, "mp4": Mp4Demuxer}
CASES = [
    ("webm-opus", "webm"),
    ("chrome-like-webm", "webm"),
    ("firefox-like-webm", "webm"),
    ("laced-webm", "webm"),
    ("mka-f32", "webm"),
    ("ogg-opus", "ogg"),
    ("mp4-aac", "mp4"),
    ("mp4-opus", "mp4"),
]


def demux(kind: str, pieces: list[bytes]) -> list[DemuxEvent]:
    demuxer: Demuxer = DEMUXERS[kind]()
    events: list[DemuxEvent] = []
    for piece in pieces:
        events += demuxer.feed(piece)
    return events + demuxer.close()


def ffprobe_packets(data: bytes, tmp: Path) -> list[int]:
    """Packet sizes of the first audio stream, as ffprobe reads the file."""
    path = tmp / "probe.bin"
    path.write_bytes(data)
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "packet=size",
         "-of", "json", str(path)],
        capture_output=True, check=True, timeout=60 * TIME_FACTOR,
    ).stdout  # fmt: skip
    return [int(p["size"]) for p in json.loads(out)["packets"]]


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_packets_match_ffprobe(
    name: str, kind: str, ffmpeg_streams: dict[str, Stream], tmp_path: Path
) -> None:
    """The demuxer finds the same packets, of the same sizes, as ffprobe."""
    data = ffmpeg_streams[name].data
    events = demux(kind, [data])
    assert isinstance(events[0], CodecSetup)
    sizes = [len(e.data) for e in events if isinstance(e, AudioPacket)]
    expected = ffprobe_packets(data, tmp_path)
    if name == "laced-webm":  # ffprobe reports a laced block's frames one by one as well
        assert sum(sizes) == sum(expected)
    assert sizes == expected


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_byte_by_byte_gives_the_same_events(
    name: str, kind: str, ffmpeg_streams: dict[str, Stream]
) -> None:
    """Byte-by-byte feeding gives exactly the events of one whole feed."""
    data = ffmpeg_streams[name].data
    if len(data) > 100_000:
        data = data[: data.find(b"\x1f\x43\xb6\x75", 60_000)]  # cut at a Cluster: stays valid
    assert demux(kind, [data[i : i + 1] for i in range(len(data))]) == demux(kind, [data])


def test_firefox_shape_decodes_opus_at_48k(ffmpeg_streams: dict[str, Stream]) -> None:
    """Firefox's track 2 with a bogus 44100 Hz rate is read as 48 kHz Opus from OpusHead."""
    setup = demux("webm", [ffmpeg_streams["firefox-like-webm"].data])[0]
    assert setup == CodecSetup("opus", 48000, 2, setup.extradata)
    assert setup.extradata is not None and setup.extradata.startswith(b"OpusHead")


def test_chrome_pcm_is_float_pcm(ffmpeg_streams: dict[str, Stream]) -> None:
    """Matroska A_PCM/FLOAT/IEEE at 32 bits is decoded as f32le at the track's own rate."""
    setup = demux("webm", [ffmpeg_streams["mka-f32"].data])[0]
    assert setup == CodecSetup("pcm_f32le", 48000, 2)


def test_opus_packet_durations() -> None:
    """Opus TOC bytes give the packet durations of RFC 6716's table."""
    assert packet_samples(bytes([0x18 << 3 | 0])) == 120  # CELT 2.5 ms, one frame
    assert packet_samples(bytes([3 << 3 | 0])) == 2880  # SILK 60 ms
    assert packet_samples(bytes([31 << 3 | 1])) == 1920  # CELT 20 ms, two frames
    assert packet_samples(bytes([31 << 3 | 3, 3])) == 2880  # CELT 20 ms, three frames
    assert packet_samples(b"") == 0


# --- sniffing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x1a\x45\xdf\xa3\x9f", "webm"),
        (b"OggS\x00\x02", "ogg"),
        (b"\x00\x00\x00\x1cftypiso5", "mp4"),
        (b"\x00\x00\x00\x18moof\x00", "mp4"),
        (b"\x1a\x45", None),
        (b"\x00\x00\x00", None),
    ],
)
def test_sniff_recognises_containers(head: bytes, expected: str | None) -> None:
    """The first bytes tell WebM, Ogg and MP4 apart; too few bytes mean wait."""
    assert sniff(head) == expected


@pytest.mark.parametrize(
    ("head", "message"),
    [(b"RIFF\x24\x00\x00\x00WAVE", "WAV"), (b"ID3\x04\x00\x00\x00\x00", "MP3"),
     (b"\x00\x01\x02\x03\x04\x05\x06\x07", "unrecognised")],
)  # fmt: skip
def test_sniff_names_what_it_refuses(head: bytes, message: str) -> None:
    """Unsupported media is refused with a message that says what it looks like."""
    with pytest.raises(MediaError, match=message):
        sniff(head)


def test_sniffing_waits_for_enough_bytes(ffmpeg_streams: dict[str, Stream]) -> None:
    """An MP4 stream arriving 1 byte at a time is still recognised."""
    data = ffmpeg_streams["mp4-aac"].data
    decoder = StreamDecoder()
    for i in range(64):
        decoder.feed(data[i : i + 1])
    assert decoder.format == "mp4"


# --- bad input -------------------------------------------------------------------------------


def _decode_all(data: bytes, fmt: str | None = None) -> None:
    decoder = StreamDecoder(fmt)
    decoder.feed(data)
    decoder.flush()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-f", "lavfi", "-i", "testsrc=duration=1:size=32x32:rate=5", "-c:v", "libvpx", "-f", "webm"),
         "no audio track"),
        (("-f", "lavfi", "-i", "testsrc=duration=1:size=32x32:rate=5", "-c:v", "mpeg4",
          "-movflags", "frag_keyframe+empty_moov", "-f", "mp4"), "no audio track"),
        (("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "libvorbis", "-f", "ogg"),
         "no Opus audio .*Vorbis"),
        (("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "libvorbis", "-f", "webm"),
         "unsupported WebM audio codec 'A_VORBIS'"),
        (("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", "-movflags", "+faststart",
          "-f", "mp4"), "not a fragmented MP4"),
        (("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "mp3", "-f", "matroska"),
         "unsupported WebM audio codec 'A_MPEG/L3'"),
    ],
)  # fmt: skip
def test_unsupported_media_is_named(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    """Video-only, Vorbis, MP3 and progressive MP4 are refused with a clear message."""
    if args[-1] == "mp4" and "+faststart" in args:
        path = tmp_path / "progressive.mp4"
        run_ffmpeg(*args, str(path))
        data = path.read_bytes()
    else:
        data = run_ffmpeg(*args, "-")
    with pytest.raises(MediaError, match=message):
        _decode_all(data)


@pytest.mark.parametrize("name", ["webm-opus", "ogg-opus", "mp4-aac", "raw-s16-22k"])
def test_truncated_stream_is_reported_at_flush(
    name: str, ffmpeg_streams: dict[str, Stream]
) -> None:
    """A stream cut inside a packet, page or box is a MediaError when it ends, not silence."""
    stream = ffmpeg_streams[name]
    decoder = StreamDecoder(stream.format if stream.declared else None, **stream.declared)
    pcm = decoder.feed(stream.data[:-3])
    assert pcm  # what came before the cut was decoded
    with pytest.raises(MediaError):
        decoder.flush()


@pytest.mark.parametrize("name", ["webm-opus", "ogg-opus", "mp4-aac"])
def test_header_only_is_an_error(name: str, ffmpeg_streams: dict[str, Stream]) -> None:
    """A stream that ends in its header is an error at flush."""
    decoder = StreamDecoder()
    decoder.feed(ffmpeg_streams[name].data[:30])
    with pytest.raises(MediaError):
        decoder.flush()


def _endless(unit: bytes, head: bytes = b"") -> bytes:
    return head + unit * ((1 << 20) // len(unit) + 2)


@pytest.mark.parametrize(
    "stream",
    [
        # WebM: a header, then Void elements and never a Tracks.
        _endless(w.element(ID.VOID, b"\x00" * 4000), w.ebml_header("webm") + w.segment_header()),
        # MP4: ftyp, then free boxes and never a moov.
        _endless(struct.pack(">I4s", 4008, b"free") + b"\x00" * 4000,
                 struct.pack(">I4s4sI", 16, b"ftyp", b"iso5", 0)),
    ],
    ids=["webm", "mp4"],
)  # fmt: skip
def test_header_that_never_completes_is_an_error(stream: bytes) -> None:
    """A stream that has not described its audio within 1 MiB is refused."""
    decoder = StreamDecoder()
    with pytest.raises(MediaError, match="no audio description"):
        for i in range(0, len(stream), 8192):
            decoder.feed(stream[i : i + 8192])


def test_ogg_without_bos_is_refused() -> None:
    """Ogg pages that belong to no announced stream are refused."""
    page = struct.pack("<4sBBqIIIB", b"OggS", 0, 0, 0, 1, 0, 0, 1) + b"\x05hello"
    with pytest.raises(MediaError, match="no Opus audio"):
        OggDemuxer().feed(page)


@pytest.mark.parametrize(
    ("fmt", "data", "message"),
    [
        ("webm", w.ebml_header("webm") + w.segment_header() + b"\x1f\x43\xb6\x75\x01\x00\x00\x01"
         + b"\x00" * 4, "media before any track"),
        ("webm", w.ebml_header("webm") + b"\xa3\x01\x00\x10\x00\x00\x00\x00\x00", "exceeds"),
        ("mp4", struct.pack(">I4s", 1, b"moov") + struct.pack(">Q", 1 << 40), "exceeds"),
        ("mp4", struct.pack(">I4s", 3, b"moov"), "impossible size"),
        ("mp4", struct.pack(">I4s", 0, b"mdat"), "unbounded"),
        ("ogg", b"OggS\x01" + b"\x00" * 30, "version"),
        ("ogg", b"OggX" + b"\x00" * 30, "sync"),
    ],
)  # fmt: skip
def test_absurd_sizes_and_garbage_fail_fast(fmt: str, data: bytes, message: str) -> None:
    """Absurd element and box sizes fail on their header, before anything is buffered."""
    with pytest.raises(MediaError, match=message):
        StreamDecoder(fmt).feed(data)


def test_doc_type_must_be_webm_or_matroska() -> None:
    """An EBML stream of another document type is refused."""
    with pytest.raises(MediaError, match="document type 'x-other'"):
        StreamDecoder().feed(w.ebml_header("x-other"))


def test_ogg_recorder_restarted_before_any_audio(ffmpeg_streams: dict[str, Stream]) -> None:
    """A chained Ogg link whose first recorder stopped before any audio still starts cleanly."""
    data = ffmpeg_streams["ogg-opus"].data
    headers = data[: data.find(b"OggS", data.find(b"OggS", 4) + 4)]  # OpusHead and OpusTags pages
    events = demux("ogg", [headers, data])
    setups = [e for e in events if isinstance(e, CodecSetup)]
    assert len(setups) == 2
    assert sum(isinstance(e, AudioPacket) for e in events) == len(demux("ogg", [data])) - 1
