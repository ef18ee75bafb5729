"""AckParser: whole, byte by byte, at random cuts, with trailing bytes, and fuzzed."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs_ingest.kvs.acks import AckError, AckEvent, AckEventType, AckParser

CAPTURE = Path("/work/shared/kvs-producer-c-capture/003-putMedia.json")

STREAM = (
    b'{"EventType":"BUFFERING","FragmentTimecode":1764050000123,"FragmentNumber":"9134"}\n'
    b'{"EventType":"RECEIVED","FragmentTimecode":1764050000123,"FragmentNumber":"9134"}'
    b' {"EventType":"PERSISTED","FragmentTimecode":1764050000123,"FragmentNumber":"9134"}\r\n'
    b'{"EventType":"IDLE"}'
    b'{"EventType":"ERROR","FragmentTimecode":1764050001123,"ErrorId":5000,'
    b'"FragmentNumber":"x{\\"}"}\n'
)
EXPECTED = [
    AckEvent(AckEventType.BUFFERING, 1764050000123, "9134"),
    AckEvent(AckEventType.RECEIVED, 1764050000123, "9134"),
    AckEvent(AckEventType.PERSISTED, 1764050000123, "9134"),
    AckEvent(AckEventType.IDLE),
    AckEvent(AckEventType.ERROR, 1764050001123, 'x{"}', 5000),
]


def feed_all(pieces: list[bytes]) -> list[AckEvent]:
    parser = AckParser()
    events = [e for p in pieces for e in parser.feed(p)]
    return events + parser.close()


def test_whole_stream() -> None:
    """The whole body at once gives every event, braces inside strings included."""
    assert feed_all([STREAM]) == EXPECTED


def test_byte_by_byte() -> None:
    """One byte at a time gives the same events."""
    assert feed_all([bytes([b]) for b in STREAM]) == EXPECTED


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=10))
def test_random_cut_points(cuts: list[int]) -> None:
    """Any split of the body gives the same events."""
    bounds = [0, *sorted(cuts), len(STREAM)]
    assert feed_all([STREAM[a:b] for a, b in itertools.pairwise(bounds)]) == EXPECTED


def test_trailing_partial_object_is_an_error_at_close() -> None:
    """An object cut off at the end of the response is reported at close()."""
    parser = AckParser()
    assert parser.feed(STREAM + b'{"EventType":"PERS') == EXPECTED
    with pytest.raises(AckError):
        parser.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"<html>",
        b'{"EventType":"NOPE","FragmentTimecode":1}',
        b'{"EventType":"ERROR","FragmentTimecode":1}',
        b'{"EventType":"PERSISTED"}',
        b'{"EventType":"PERSISTED","FragmentTimecode":"1"}',
        b"{not json}",
        b"[1]",
    ],
)
def test_peer_garbage_raises_ack_error(raw: bytes) -> None:
    """What is not an ack stream raises AckError, and the parser stays failed."""
    parser = AckParser()
    with pytest.raises(AckError):
        parser.feed(raw)
    with pytest.raises(AckError):
        parser.feed(b"{}")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_result_or_our_error(data: bytes) -> None:
    """Arbitrary bytes give events or AckError, never another exception."""
    parser = AckParser()
    try:
        parser.feed(data)
        parser.close()
    except AckError:
        pass


def test_acks_recorded_from_the_c_producer_session() -> None:
    """The ack objects the capture's stand-in sent parse to the same events, in order."""
    acks = [a["ack"] for a in json.loads(CAPTURE.read_text())["acks"]]
    raw = b"".join(json.dumps(a).encode() + b"\n" for a in acks)
    events = feed_all([raw])
    assert [e.type.value for e in events] == [a["EventType"] for a in acks]
    assert [e.timecode for e in events] == [a["FragmentTimecode"] for a in acks]
