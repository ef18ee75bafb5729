"""EBML/Matroska writer: pure functions from values to bytes.

Only what a PutMedia body, an emulator response and our tests need (KVS-PROTOCOL.md, "MKV that
KVS accepts"). Everything returns `bytes`; callers join pieces themselves so that a fragment can
be built with one `b"".join` and no intermediate copies.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from kvs_ingest.mkv.ids import ID

# An 8-byte "unknown size" (all value bits set): what the KVS producers write for Segment and
# Cluster (RFC 8794 §6.2).
UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"


def encode_id(element_id: int) -> bytes:
    """Element ids carry their own length marker: write their bytes big-endian, as they are."""
    length = (element_id.bit_length() + 7) // 8
    return element_id.to_bytes(length, "big")


def encode_size(size: int, width: int | None = None) -> bytes:
    """A data-size vint, as short as possible unless `width` (1-8) is asked for."""
    if size < 0:
        raise ValueError("negative element size")
    if width is None:
        width = 1
        while size >= (1 << (7 * width)) - 1:  # all-ones is reserved for "unknown"
            width += 1
    if width > 8 or size >= (1 << (7 * width)) - 1:
        raise ValueError(f"size {size} does not fit a {width}-byte vint")
    return (size | (1 << (7 * width))).to_bytes(width, "big")


def element(element_id: int, payload: bytes) -> bytes:
    return b"".join((encode_id(element_id), encode_size(len(payload)), payload))


def master_unknown(element_id: int) -> bytes:
    """The start of a master element whose end is not known yet (Segment, Cluster)."""
    return encode_id(element_id) + UNKNOWN_SIZE


def uint(element_id: int, value: int) -> bytes:
    if value < 0:
        raise ValueError("uint element with a negative value")
    return element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def sint(element_id: int, value: int) -> bytes:
    length = max(1, (value.bit_length() + 8) // 8)
    return element(element_id, value.to_bytes(length, "big", signed=True))


def float64(element_id: int, value: float) -> bytes:
    return element(element_id, struct.pack(">d", value))


def string(element_id: int, value: str) -> bytes:
    return element(element_id, value.encode("utf-8"))


def binary(element_id: int, value: bytes) -> bytes:
    return element(element_id, value)


def ebml_header(doc_type: str = "matroska", doc_type_version: int = 2) -> bytes:
    return element(
        ID.EBML,
        b"".join(
            (
                uint(ID.EBML_VERSION, 1),
                uint(ID.EBML_READ_VERSION, 1),
                uint(ID.EBML_MAX_ID_LENGTH, 4),
                uint(ID.EBML_MAX_SIZE_LENGTH, 8),
                string(ID.DOC_TYPE, doc_type),
                uint(ID.DOC_TYPE_VERSION, doc_type_version),
                uint(ID.DOC_TYPE_READ_VERSION, 2),
            )
        ),
    )


def segment_header() -> bytes:
    return master_unknown(ID.SEGMENT)


def info(segment_uid: bytes, *, timecode_scale: int = 1_000_000, app: str = "kvs-ingest") -> bytes:
    if len(segment_uid) != 16:
        raise ValueError("SegmentUID must be 16 bytes")
    return element(
        ID.INFO,
        b"".join(
            (
                binary(ID.SEGMENT_UID, segment_uid),
                uint(ID.TIMECODE_SCALE, timecode_scale),
                string(ID.MUXING_APP, app),
                string(ID.WRITING_APP, app),
            )
        ),
    )


@dataclass(frozen=True, slots=True)
class AudioTrack:
    """One audio TrackEntry; the defaults are KVS's PCM track (DESIGN.md §4.5)."""

    number: int = 1
    uid: int = 1
    codec_id: str = "A_PCM/INT/LIT"
    sampling_frequency: float = 16000.0
    channels: int = 1
    bit_depth: int | None = 16
    name: str = "audio"
    codec_private: bytes | None = None

    def encode(self) -> bytes:
        audio = [
            float64(ID.SAMPLING_FREQUENCY, self.sampling_frequency),
            uint(ID.CHANNELS, self.channels),
        ]
        if self.bit_depth is not None:
            audio.append(uint(ID.BIT_DEPTH, self.bit_depth))
        parts = [
            uint(ID.TRACK_NUMBER, self.number),
            uint(ID.TRACK_UID, self.uid),
            uint(ID.TRACK_TYPE, 2),
            string(ID.NAME, self.name),
            string(ID.CODEC_ID, self.codec_id),
        ]
        if self.codec_private is not None:
            parts.append(binary(ID.CODEC_PRIVATE, self.codec_private))
        parts.append(element(ID.AUDIO, b"".join(audio)))
        return element(ID.TRACK_ENTRY, b"".join(parts))


def tracks(*audio_tracks: AudioTrack) -> bytes:
    return element(ID.TRACKS, b"".join(t.encode() for t in audio_tracks or (AudioTrack(),)))


def cluster_header(timecode: int) -> bytes:
    """An unknown-size Cluster and its Timecode: blocks may follow as they are produced."""
    return master_unknown(ID.CLUSTER) + uint(ID.TIMECODE, timecode)


def cluster(timecode: int, body: bytes) -> bytes:
    """A known-size Cluster around already-encoded blocks."""
    return element(ID.CLUSTER, uint(ID.TIMECODE, timecode) + body)


_BLOCK_HEAD = struct.Struct(">hB")


def simple_block(track: int, rel_timecode: int, payload: bytes, *, keyframe: bool = True) -> bytes:
    """A SimpleBlock without lacing; `rel_timecode` is relative to the Cluster (signed 16 bit)."""
    if not -32768 <= rel_timecode <= 32767:
        raise ValueError(f"block timecode {rel_timecode} does not fit 16 bits")
    head = encode_size(track) + _BLOCK_HEAD.pack(rel_timecode, 0x80 if keyframe else 0)
    size = len(head) + len(payload)
    return b"".join((b"\xa3", encode_size(size), head, payload))


def simple_tag(name: str, value: str) -> bytes:
    return element(ID.SIMPLE_TAG, string(ID.TAG_NAME, name) + string(ID.TAG_STRING, value))


def tags(items: Iterable[tuple[str, str]]) -> bytes:
    """One Tags element holding one Tag with a SimpleTag per (name, value)."""
    body = b"".join(simple_tag(name, value) for name, value in items)
    return element(ID.TAGS, element(ID.TAG, body))
