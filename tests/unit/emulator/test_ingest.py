"""PutMediaParser: whole bodies, byte by byte, random cuts; every KVS rule; the fuzz invariant
"events or IngestFailed, never an exception"."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs_ingest.emulator.ingest import (
    FragmentComplete,
    FragmentStarted,
    IngestEvent,
    IngestFailed,
    PutMediaParser,
)
from kvs_ingest.mkv import writer as w

CAPTURE = Path(__file__).resolve().parents[4] / "shared" / "kvs-producer-c-capture"
PCM = bytes(range(256)) * 25  # 6400 bytes: 200 ms


def body(fragments: int = 3, t0: int = 1_000_000) -> bytes:
    parts = [w.ebml_header(), w.segment_header(), w.info(b"x" * 16), w.tracks()]
    for f in range(fragments):
        parts.append(w.tags([("MimeType", "audio/L16")]))
        parts.append(w.cluster_header(t0 + f * 1000))
        parts += [w.simple_block(1, b * 200, PCM) for b in range(5)]
    return b"".join(parts)


def run(data: bytes, cuts: list[int] | None = None) -> list[IngestEvent]:
    parser = PutMediaParser()
    events: list[IngestEvent] = []
    pos = 0
    for cut in sorted(cuts or []):
        events += parser.feed(data[pos:cut])
        pos = cut
    events += parser.feed(data[pos:])
    return events + parser.close()


def summary(events: list[IngestEvent]) -> list[tuple[str, int]]:
    return [
        (type(e).__name__, e.error_id if isinstance(e, IngestFailed) else e.timecode)
        for e in events
    ]


def test_whole_body() -> None:
    """Three clusters give three fragments with duration, tags and a known-size Cluster."""
    events = run(body())
    assert summary(events) == [
        ("FragmentStarted", 1_000_000), ("FragmentComplete", 1_000_000),
        ("FragmentStarted", 1_001_000), ("FragmentComplete", 1_001_000),
        ("FragmentStarted", 1_002_000), ("FragmentComplete", 1_002_000),
    ]  # fmt: skip
    complete = [e for e in events if isinstance(e, FragmentComplete)]
    assert all(c.duration_ms == 1000 and c.frames == 5 for c in complete)
    assert complete[0].tags == (("MimeType", "audio/L16"),)
    assert complete[0].cluster[:4] == b"\x1f\x43\xb6\x75" and complete[0].cluster[4] != 0x01


def test_byte_by_byte_matches_whole() -> None:
    """Feeding one byte at a time gives the same events as feeding everything at once."""
    data = body(2)
    assert run(data, list(range(1, len(data)))) == run(data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=len(body())), max_size=20))
def test_random_cuts(cuts: list[int]) -> None:
    """Any split of the body gives the same events."""
    assert run(body(), cuts) == run(body())


def test_end_of_fragment_tag_completes_fragment() -> None:
    """The producer's END_OF_FRAGMENT tag completes the open fragment before the body ends."""
    parser = PutMediaParser()
    data = body(1) + w.tags([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")])
    events = parser.feed(data)
    assert [type(e) for e in events] == [FragmentStarted, FragmentComplete]
    assert parser.close() == []


@pytest.mark.skipif(not CAPTURE.is_dir(), reason="capture not available")
def test_recorded_sdk_body() -> None:
    """The C producer's body (1-byte unknown sizes, Position) parses into its 2 s fragments."""
    data = (CAPTURE / "003-putMedia.mkv").read_bytes()
    complete = [e for e in run(data, list(range(0, len(data), 653))) if
                isinstance(e, FragmentComplete)]  # fmt: skip
    assert [c.timecode for c in complete] == [1795641180142, 1795641182142, 1795641184142]
    assert [c.frames for c in complete] == [100, 100, 100]
    assert all(c.duration_ms == 2000 for c in complete)


@pytest.mark.parametrize(
    ("data", "error_id"),
    [
        (b"garbage!", 4006),
        (w.ebml_header() + w.segment_header() + w.cluster_header(0), 4006),
        (body(2) + w.cluster_header(0) + w.simple_block(3, 0, PCM), 4010),
        (body(1)[:-10], 4006),
        (w.ebml_header() + w.segment_header() + w.info(b"x" * 16)
         + w.tracks(*(w.AudioTrack(number=n, uid=n) for n in (1, 2, 3, 4))), 4012),
    ],
)  # fmt: skip
def test_rule_errors(data: bytes, error_id: int) -> None:
    """Broken rules end with one IngestFailed carrying KVS's error id."""
    events = run(data)
    assert isinstance(events[-1], IngestFailed) and events[-1].error_id == error_id
    assert sum(isinstance(e, IngestFailed) for e in events) == 1


def test_duration_and_size_limits() -> None:
    """Fragments over the configured duration or size fail with 4002 / 4001."""
    long = body(0) + w.cluster_header(0) + w.simple_block(1, 0, PCM) + w.simple_block(1, 500, PCM)
    parser = PutMediaParser(max_fragment_ms=400)
    assert summary(parser.feed(long))[-1] == ("IngestFailed", 4002)
    parser = PutMediaParser(max_fragment_bytes=10_000)
    assert summary(parser.feed(body(1)))[-1] == ("IngestFailed", 4001)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=600))
def test_fuzz_never_raises(noise: bytes, at: int) -> None:
    """Random bytes, alone or spliced into a valid body, give events or IngestFailed only."""
    valid = body(1)
    for data in (noise, valid[:at] + noise + valid[at:]):
        events = run(data)
        assert all(isinstance(e, FragmentStarted | FragmentComplete | IngestFailed)
                   for e in events)  # fmt: skip
