"""Speaker protocol v1, sans-I/O (DESIGN.md §4.4): request parsing, messages in, acks out.

`parse_speaker_request` turns the handshake's path, query and headers into a `SpeakerRequest` or
a `PeerError`. `SpeakerProtocol` is fed each WebSocket message and each decoded-sample count and
hands back events; it reads no clock and owns no socket, so `SpeakerConnection` (the asyncio
side) stays a thin loop and every rule here is tested without a network.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kvs_ingest.server.errors import MessageTooBig, ProtocolViolation, UnsupportedMedia

SUBPROTOCOL = "kvs-ingest.v1"
BEARER_PREFIX = "bearer."
SPEAKER_PATH = re.compile(r"/v1/sessions/(?P<session_id>[^/]*)/speaker")
SESSION_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
FORMATS = frozenset({"webm", "ogg", "mp4", "pcm_s16le"})
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class SpeakerRequest:
    """What a speaker's handshake asks for; only valid requests exist."""

    session_id: str
    format: str | None = None
    rate: int | None = None
    channels: int | None = None

    def __post_init__(self) -> None:
        if not SESSION_ID.fullmatch(self.session_id):
            raise ValueError(f"bad session id {self.session_id!r}")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"bad format {self.format!r}")


def match_speaker_path(path: str) -> str | None:
    """The raw session id segment if `path` (without query) is a speaker path, else None."""
    m = SPEAKER_PATH.fullmatch(path)
    return m.group("session_id") if m else None


def parse_speaker_request(target: str) -> SpeakerRequest:
    """Parse a speaker request target (`/v1/sessions/{id}/speaker?format=…`).

    Raises `ProtocolViolation` (4400) for a bad session id or bad numbers, `UnsupportedMedia`
    (4415) for a format we do not decode. The caller has already checked the path shape.
    """
    parts = urlsplit(target)
    raw_id = match_speaker_path(parts.path)
    if raw_id is None:
        raise ProtocolViolation("not a speaker path", reason="bad_path")
    if not SESSION_ID.fullmatch(raw_id):
        raise ProtocolViolation(
            "session id must match [A-Za-z0-9_.-]{1,128}", reason="bad_session_id"
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    fmt = _one(query, "format")
    if fmt is not None and fmt not in FORMATS:
        raise UnsupportedMedia(
            f"format must be one of {', '.join(sorted(FORMATS))}", reason="bad_format"
        )
    rate = _positive_int(query, "rate", upper=384_000)
    channels = _positive_int(query, "channels", upper=8)
    if (rate is not None or channels is not None) and fmt not in (None, "pcm_s16le"):
        raise ProtocolViolation("rate and channels apply to pcm_s16le only", reason="bad_query")
    if fmt == "pcm_s16le" and rate is None:
        rate = SAMPLE_RATE
    if fmt == "pcm_s16le" and channels is None:
        channels = 1
    return SpeakerRequest(raw_id, fmt, rate, channels)


def query_token(target: str) -> str | None:
    """The legacy `?token=` value, if any."""
    return _one(parse_qs(urlsplit(target).query), "token")


def _one(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ProtocolViolation(f"{name} given more than once", reason="bad_query")
    return values[0]


def _positive_int(query: dict[str, list[str]], name: str, *, upper: int) -> int | None:
    value = _one(query, name)
    if value is None:
        return None
    if not value.isdigit() or not 0 < int(value) <= upper:
        raise ProtocolViolation(f"{name} must be an integer in 1..{upper}", reason="bad_query")
    return int(value)


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Media:
    """Media bytes of binary message number `seq` (or of a legacy `audioChunk`)."""

    seq: int
    data: bytes

    def __post_init__(self) -> None:
        if self.seq < 0:
            raise ValueError("seq must be >= 0")


@dataclass(frozen=True)
class Stop:
    """The client asks to flush, wait until everything is persisted, and close 1000."""


@dataclass(frozen=True)
class Keepalive:
    """The client is still there but has nothing to send."""


@dataclass(frozen=True)
class Ack:
    """Every frame completed by messages <= `seq` is persisted; `persisted_ms` is this socket's
    persisted audio in milliseconds."""

    seq: int
    persisted_ms: int

    def __post_init__(self) -> None:
        if self.seq < 0 or self.persisted_ms < 0:
            raise ValueError("ack fields must be >= 0")

    def to_json(self) -> str:
        return json.dumps({"type": "ack", "seq": self.seq, "persisted_ms": self.persisted_ms})


ClientEvent = Media | Stop | Keepalive


def ready_message(session_id: str, stream_name: str, fmt: str | None, instance: str) -> str:
    """`instance` names the process: audio a socket left held (`held_seq`) is written by that
    process, so a client whose next `ready` names another instance cannot count on it."""
    return json.dumps(
        {
            "type": "ready",
            "protocol": SUBPROTOCOL,
            "session": session_id,
            "stream": stream_name,
            "format": fmt or "auto",
            "instance": instance,
        }
    )


def error_message(code: int, message: str, held_seq: int | None = None) -> str:
    """The `error` sent before a close. A socket that got `ready` adds `held_seq`: every frame
    completed by messages <= held_seq is in the session and goes to KVS (acked or not yet),
    so after a 4503 the client resends only the messages after it (-1: nothing is held)."""
    body: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if held_seq is not None:
        body["held_seq"] = held_seq
    return json.dumps(body)


class SpeakerProtocol:
    """One socket's protocol state: message numbering and the sample bookkeeping behind acks.

    Call `receive(message)` for each WebSocket message (bytes or str) and act on the event it
    returns; call `decoded(seq, samples)` after the decoder's output for message `seq` has been
    handed to the session; call `persisted(n)` with the cumulative count of this socket's samples
    now persisted and send the `Ack` it may return. After `stop` nothing more may be received.
    """

    def __init__(self, *, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.next_seq = 0  # the seq the next media message gets
        self.samples = 0  # samples decoded so far on this socket
        self.stopped = False
        self._acked_seq = -1
        self._held_seq = -1
        self._persisted = 0
        # (seq, cumulative samples once seq is decoded), in seq order, not yet acked.
        self._pending: deque[tuple[int, int]] = deque()

    @property
    def acked_seq(self) -> int:
        return self._acked_seq

    @property
    def persisted_samples(self) -> int:
        return self._persisted

    @property
    def held_seq(self) -> int:
        """The last message whose decoded audio the session has (-1: none): written, so it
        reaches KVS whatever becomes of this socket."""
        return self._held_seq

    def receive(self, message: bytes | str) -> ClientEvent:
        """Classify one message; raises `ProtocolViolation` or `MessageTooBig`."""
        if self.stopped:
            raise ProtocolViolation("message after stop", reason="after_stop")
        if len(message) > self.max_message_bytes:
            raise MessageTooBig(
                f"messages are limited to {self.max_message_bytes} bytes", reason="too_big"
            )
        if isinstance(message, bytes):
            return self._media(message)
        return self._control(message)

    def _media(self, data: bytes) -> Media:
        event = Media(self.next_seq, data)
        self.next_seq += 1
        return event

    def _control(self, text: str) -> ClientEvent:
        try:
            obj: Any = json.loads(text)
        except ValueError:
            raise ProtocolViolation("text messages must be JSON", reason="bad_json") from None
        if not isinstance(obj, dict):
            raise ProtocolViolation("control messages are JSON objects", reason="bad_json")
        kind = obj.get("type")
        if kind == "stop":
            self.stopped = True
            return Stop()
        if kind == "keepalive":
            return Keepalive()
        if kind is None and obj.get("action") == "audioChunk":
            return self._media(_legacy_audio(obj))
        raise ProtocolViolation("unknown message type", reason="unknown_type")

    def decoded(self, seq: int, samples: int) -> None:
        """Record that message `seq` (and the ones before it) yielded `samples` more samples."""
        if seq < 0 or seq >= self.next_seq or samples < 0:
            raise ValueError("decoded() for a message not received")
        self.samples += samples
        self._held_seq = max(self._held_seq, seq)
        if self._pending and self._pending[-1][0] == seq:
            self._pending[-1] = (seq, self.samples)
        else:
            self._pending.append((seq, self.samples))

    def persisted(self, samples: int) -> Ack | None:
        """The new ack once `samples` of this socket's audio are persisted, or None."""
        self._persisted = max(self._persisted, min(samples, self.samples))
        seq = self._acked_seq
        while self._pending and self._pending[0][1] <= self._persisted:
            seq = self._pending.popleft()[0]
        if seq == self._acked_seq:
            return None
        self._acked_seq = seq
        return Ack(seq, self._persisted * 1000 // SAMPLE_RATE)

    def finished(self) -> Ack | None:
        """After a successful flush: every message received is acked (the last ack, if new)."""
        self._pending.clear()
        self._persisted = self.samples
        last = self.next_seq - 1
        if last <= self._acked_seq:
            return None
        self._acked_seq = last
        return Ack(last, self._persisted * 1000 // SAMPLE_RATE)


def _legacy_audio(obj: dict[str, Any]) -> bytes:
    """The media bytes of the old API Gateway route's `audioChunk` message."""
    data = obj.get("audioData")
    if not isinstance(data, str):
        raise ProtocolViolation("audioChunk needs audioData (base64)", reason="bad_legacy")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolViolation("audioData is not base64", reason="bad_legacy") from None
