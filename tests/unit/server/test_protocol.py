"""SpeakerProtocol and request parsing: message classes, sequence numbers, acks from counts."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs_ingest.server.errors import CloseCode, MessageTooBig, PeerError, ProtocolViolation
from kvs_ingest.server.protocol import (
    Ack,
    Keepalive,
    Media,
    SpeakerProtocol,
    SpeakerRequest,
    Stop,
    error_message,
    parse_speaker_request,
    query_token,
    ready_message,
)


def proto(limit: int = 1 << 20) -> SpeakerProtocol:
    return SpeakerProtocol(max_message_bytes=limit)


def test_binary_messages_are_numbered_from_zero() -> None:
    """The n-th binary message gets seq n."""
    p = proto()
    assert p.receive(b"a") == Media(0, b"a")
    assert p.receive(b"b") == Media(1, b"b")


def test_legacy_audio_chunk_is_media_with_the_next_seq() -> None:
    """`{"action":"audioChunk","audioData":base64}` counts as the next media message."""
    p = proto()
    p.receive(b"x")
    msg = json.dumps({"action": "audioChunk", "audioData": base64.b64encode(b"\x01\x02").decode()})
    assert p.receive(msg) == Media(1, b"\x01\x02")


def test_control_messages() -> None:
    """stop and keepalive are recognised; after stop nothing more is accepted."""
    p = proto()
    assert p.receive('{"type":"keepalive"}') == Keepalive()
    assert p.receive('{"type":"stop"}') == Stop()
    with pytest.raises(ProtocolViolation):
        p.receive(b"late")


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1]",
        '{"type":"dance"}',
        '{"action":"audioChunk"}',
        '{"action":"audioChunk","audioData":"***"}',
        "{}",
    ],
)
def test_malformed_text_is_4400(text: str) -> None:
    """Bad control messages raise a peer error that closes with 4400."""
    with pytest.raises(ProtocolViolation) as info:
        proto().receive(text)
    assert info.value.code == CloseCode.BAD_MESSAGE


def test_oversized_message_is_1009() -> None:
    """A message over the limit raises MessageTooBig (1009); one at the limit passes."""
    p = proto(limit=1024)
    assert p.receive(b"x" * 1024) == Media(0, b"x" * 1024)
    with pytest.raises(MessageTooBig) as info:
        p.receive(b"x" * 1025)
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG


def test_ack_is_the_largest_seq_whose_samples_are_persisted() -> None:
    """Acks follow cumulative persisted samples; a zero-sample message rides along."""
    p = proto()
    for _ in range(4):
        p.receive(b"m")
    p.decoded(0, 0)  # header only
    p.decoded(1, 4000)
    p.decoded(2, 4000)
    p.decoded(3, 4000)
    assert p.persisted(3999) == Ack(0, 249)
    assert p.persisted(3999) is None
    assert p.persisted(8000) == Ack(2, 500)
    assert p.persisted(12000) == Ack(3, 750)


def test_undecoded_messages_are_not_acked() -> None:
    """A message received but not yet handed to the session is never acked."""
    p = proto()
    p.receive(b"m")
    p.receive(b"m")
    p.decoded(0, 100)
    assert p.persisted(100) == Ack(0, 6)
    assert p.persisted(10_000) is None  # clamp: more than was decoded cannot be persisted


def test_finished_acks_the_last_message() -> None:
    """After a successful flush the last seq is acked even if it decoded no samples."""
    p = proto()
    p.receive(b"m")
    p.receive(b"m")
    p.decoded(0, 1600)
    p.decoded(1, 0)
    assert p.persisted(1600) == Ack(1, 100)
    assert p.finished() is None
    p2 = proto()
    p2.receive(b"m")
    p2.decoded(0, 800)
    assert p2.finished() == Ack(0, 50)


def test_held_seq_is_the_last_message_handed_to_the_session() -> None:
    """`held_seq` (sent in an `error` before a close) counts written messages, not received or
    persisted ones: after a 4503 the client resends exactly the messages after it."""
    p = proto()
    assert p.held_seq == -1
    for _ in range(3):
        p.receive(b"m")
    p.decoded(0, 0)  # a header: held (nothing to resend), though no audio
    assert p.held_seq == 0
    p.decoded(1, 4000)
    assert p.held_seq == 1  # message 2 was received but not written: not held
    assert p.persisted(0) == Ack(0, 0)  # acked: the header; held: message 1 as well
    p.decoded(1, 50)  # the codec's tail, written for the last message again
    assert p.held_seq == 1


def test_ready_names_the_process_instance() -> None:
    ready = json.loads(ready_message("s1", "session-s1", None, "0123abcd"))
    assert ready == {
        "type": "ready",
        "protocol": "kvs-ingest.v1",
        "session": "s1",
        "stream": "session-s1",
        "format": "auto",
        "instance": "0123abcd",
    }


def test_error_message_carries_held_seq_only_when_given() -> None:
    assert json.loads(error_message(4503, "full", 7)) == {
        "type": "error",
        "code": 4503,
        "message": "full",
        "held_seq": 7,
    }
    assert "held_seq" not in json.loads(error_message(4401, "bad token"))


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=30), st.data())
@settings(max_examples=60, deadline=None)
def test_acks_increase_and_never_run_ahead(sizes: list[int], data: st.DataObject) -> None:
    """Acks are strictly increasing and never cover samples not persisted."""
    p = proto()
    ends = []
    total = 0
    for i, n in enumerate(sizes):
        p.receive(b"m")
        p.decoded(i, n)
        total += n
        ends.append(total)
    last = -1
    for n in sorted(data.draw(st.lists(st.integers(0, total), max_size=20))):
        ack = p.persisted(n)
        if ack is not None:
            assert ack.seq > last
            assert ends[ack.seq] <= n
            last = ack.seq


def test_request_parsing() -> None:
    """Path, format and raw-PCM parameters become a SpeakerRequest."""
    assert parse_speaker_request("/v1/sessions/abc-1.x_y/speaker") == SpeakerRequest("abc-1.x_y")
    r = parse_speaker_request("/v1/sessions/s/speaker?format=pcm_s16le&rate=48000&channels=2")
    assert r == SpeakerRequest("s", "pcm_s16le", 48000, 2)
    assert parse_speaker_request("/v1/sessions/s/speaker?format=pcm_s16le").rate == 16000
    assert query_token("/v1/sessions/s/speaker?token=abc") == "abc"


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/v1/sessions/bad%20id/speaker", 4400),
        ("/v1/sessions/" + "a" * 129 + "/speaker", 4400),
        ("/v1/sessions/s/speaker?format=flac", 4415),
        ("/v1/sessions/s/speaker?format=webm&rate=16000", 4400),
        ("/v1/sessions/s/speaker?format=pcm_s16le&rate=0", 4400),
        ("/v1/sessions/s/speaker?format=webm&format=ogg", 4400),
    ],
)
def test_bad_requests_carry_their_close_code(target: str, code: int) -> None:
    """Each bad request is a PeerError with the close code of DESIGN.md's table."""
    with pytest.raises(PeerError) as info:
        parse_speaker_request(target)
    assert int(info.value.code) == code
