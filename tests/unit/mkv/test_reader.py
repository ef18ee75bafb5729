"""The incremental reader: whole, byte by byte, at random cut points, with trailing bytes, on
real KVS output, and under fuzzing (result or MkvError, never anything else)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs_ingest.mkv import (
    ID,
    EbmlReader,
    Event,
    Leaf,
    MasterEnd,
    MasterStart,
    MkvError,
    parse_block,
    read_float,
    read_string,
    read_uint,
    writer,
)

SHARED = Path(__file__).resolve().parents[4] / "shared"
GETMEDIA = SHARED / "kvs-getmedia-samples"
CAPTURE = SHARED / "kvs-producer-c-capture"


def _sample() -> bytes:
    return b"".join(
        [
            writer.ebml_header(),
            writer.segment_header(),
            writer.info(bytes(range(16))),
            writer.tracks(writer.AudioTrack()),
            writer.tags([("MimeType", "audio/L16;rate=16000;channels=1"), ("session", "s1")]),
            writer.cluster_header(1_000),
            writer.simple_block(1, 0, b"\x00\x01" * 160),
            writer.simple_block(1, 10, b"\x02\x03" * 160),
            writer.cluster_header(2_000),
            writer.simple_block(1, 0, b"\x04\x05" * 160),
        ]
    )


def _read(data: bytes, cuts: list[int] | None = None) -> list[Event]:
    reader = EbmlReader()
    events: list[Event] = []
    bounds = [0, *sorted(set(cuts or [])), len(data)]
    for start, end in itertools.pairwise(bounds):
        events += reader.feed(data[start:end])
    return events + reader.close()


def test_whole_stream_events() -> None:
    """Unknown-size Clusters end at the next Cluster and at end of input; Segment at close."""
    events = _read(_sample())
    starts = [e.id for e in events if isinstance(e, MasterStart)]
    ends = [e.id for e in events if isinstance(e, MasterEnd)]
    assert starts.count(ID.CLUSTER) == 2 and ends.count(ID.CLUSTER) == 2
    assert ends[-1] == ID.SEGMENT
    blocks = [
        parse_block(e.data) for e in events if isinstance(e, Leaf) and e.id == ID.SIMPLE_BLOCK
    ]
    assert [(b.track, b.timecode, b.keyframe) for b in blocks] == [
        (1, 0, True),
        (1, 10, True),
        (1, 0, True),
    ]
    timecodes = [read_uint(e.data) for e in events if isinstance(e, Leaf) and e.id == ID.TIMECODE]
    assert timecodes == [1000, 2000]
    rate = next(e for e in events if isinstance(e, Leaf) and e.id == ID.SAMPLING_FREQUENCY)
    assert read_float(rate.data) == 16000.0
    names = [read_string(e.data) for e in events if isinstance(e, Leaf) and e.id == ID.TAG_NAME]
    assert names == ["MimeType", "session"]


def test_byte_by_byte_equals_whole() -> None:
    """Feeding one byte at a time yields exactly the events of the whole stream."""
    data = _sample()
    assert _read(data, list(range(1, len(data)))) == _read(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=1, max_value=2000), max_size=40))
def test_random_cuts_equal_whole(cuts: list[int]) -> None:
    """Any cut points yield the same events as the whole stream."""
    data = _sample()
    assert _read(data, [c % len(data) for c in cuts]) == _read(data)


def test_cluster_is_reported_before_it_ends() -> None:
    """A block is delivered as soon as it is complete, while its Cluster is still open."""
    data = _sample()
    reader = EbmlReader()
    block = writer.simple_block(1, 0, b"\x00\x01" * 160)
    first_block_end = data.index(block) + len(block)
    events = reader.feed(data[:first_block_end])
    assert any(isinstance(e, Leaf) and e.id == ID.SIMPLE_BLOCK for e in events)
    assert reader.path == (ID.SEGMENT, ID.CLUSTER)


def test_trailing_partial_element_is_an_error_at_close() -> None:
    """A stream cut inside an element raises MkvError at close, not before."""
    data = _sample()
    reader = EbmlReader()
    reader.feed(data[:-5])
    with pytest.raises(MkvError):
        reader.close()


def test_second_ebml_header_ends_the_segment() -> None:
    """A new EBML header (a restarted recorder) closes the open Cluster and Segment."""
    data = _sample()
    events = _read(data + data)
    assert [e.id for e in events if isinstance(e, MasterStart) and e.id == ID.EBML] == [ID.EBML] * 2
    seg_ends = [e for e in events if isinstance(e, MasterEnd) and e.id == ID.SEGMENT]
    assert [e.offset for e in seg_ends] == [len(data), 2 * len(data)]


def test_oversized_leaf_is_refused_early() -> None:
    """A leaf announcing more than the bound fails at once, without buffering its payload."""
    reader = EbmlReader(max_element_size=1000)
    with pytest.raises(MkvError, match="exceeds"):
        reader.feed(b"\xa3\x48\x00")  # SimpleBlock of 0x800 bytes


def test_lacing_xiph_ebml_fixed() -> None:
    """Laced blocks split into their frames (Matroska §10.3)."""
    xiph = b"\x81\x00\x05\x82" + b"\x02" + b"\xff\x01" + b"\x03" + b"A" * 256 + b"BBB" + b"CC"
    assert [len(f) for f in parse_block(xiph).frames] == [256, 3, 2]
    ebml = b"\x81\x00\x00\x86" + b"\x02" + b"\x84" + b"\xbf" + b"A" * 4 + b"B" * 4 + b"C" * 7
    assert [len(f) for f in parse_block(ebml).frames] == [4, 4, 7]
    fixed = b"\x81\x00\x00\x84" + b"\x02" + b"X" * 9
    assert [len(f) for f in parse_block(fixed).frames] == [3, 3, 3]
    with pytest.raises(MkvError):
        parse_block(b"\x81\x00\x00\x84\x02" + b"X" * 10)


@pytest.mark.parametrize(
    "path",
    [
        *sorted(GETMEDIA.glob("*.mkv")),
        *sorted(CAPTURE.glob("**/*.mkv")),
    ],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_real_kvs_and_producer_files(path: Path) -> None:
    """Real GetMedia output and AWS's C producer's PutMedia bodies parse cleanly in pieces."""
    data = path.read_bytes()
    rng = random.Random(path.name)
    cuts = [rng.randrange(1, len(data)) for _ in range(50)]
    events = _read(data, cuts)
    assert events == _read(data)
    starts = [e for e in events if isinstance(e, MasterStart)]
    ends = [e for e in events if isinstance(e, MasterEnd)]
    assert len(starts) == len(ends)
    ebml_headers = sum(1 for e in starts if e.id == ID.EBML)
    if path.parent == GETMEDIA and path.name == "output_get_media.mkv":
        assert ebml_headers == 5  # one complete MKV per fragment
        tags = [read_string(e.data) for e in events if isinstance(e, Leaf) and e.id == ID.TAG_NAME]
        assert tags.count("AWS_KINESISVIDEO_CONTINUATION_TOKEN") == 5
    if path.parent.parent == CAPTURE or path.parent == CAPTURE:
        blocks = [
            parse_block(e.data) for e in events if isinstance(e, Leaf) and e.id == ID.SIMPLE_BLOCK
        ]
        assert blocks and all(len(b.frames[0]) == 640 for b in blocks)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=10**6))
def test_fuzz_only_mkv_error_escapes(noise: bytes, seed: int) -> None:
    """Corrupted streams give events or MkvError, never another exception."""
    data = bytearray(_sample())
    rng = random.Random(seed)
    for _ in range(rng.randrange(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    cut = rng.randrange(len(data))
    for stream in (bytes(data), bytes(data[:cut]) + noise, noise):
        reader = EbmlReader(max_element_size=4096)
        try:
            for i in range(0, len(stream), 37):
                for event in reader.feed(stream[i : i + 37]):
                    if isinstance(event, Leaf) and event.id == ID.SIMPLE_BLOCK:
                        parse_block(event.data)
            reader.close()
        except MkvError:
            pass
        assert reader.buffered <= 4096 + 16
