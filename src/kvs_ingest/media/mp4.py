"""Fragmented MP4 demuxer (ISO/IEC 14496-12 boxes), sans-I/O.

Safari's `audio/mp4` (AAC) and Chrome's `audio/mp4` (Opus) MediaRecorder output, and FFmpeg's
`frag_keyframe+empty_moov+default_base_moof`: ftyp, moov (the set-up, no samples), then
moof+mdat pairs. Boxes are buffered whole up to a cap (a fragment's mdat is a few KiB of audio);
boxes we do not need are skipped as they stream past. A second moov starts a new segment. A
progressive MP4 (samples in a moov's sample tables) is refused: a live recorder never writes one.
Edit lists are ignored, as FFmpeg ignores them in fragmented files (checked: an elst with
media_time 1024 or 2112 leaves FFmpeg's decode unchanged), so our output lines up with it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kvs_ingest.media.errors import MediaError
from kvs_ingest.media.events import AudioPacket, CodecSetup, DemuxEvent

MAX_BOX_BYTES = 2 << 20  # a 1 s fragment of AAC or Opus is ~16 KiB
MAX_SAMPLES_PER_RUN = 1 << 16
_CONTAINERS = frozenset({b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"edts", b"traf"})
_BUFFERED = frozenset({b"moov", b"moof", b"mdat"})
_TOP_LEVEL = frozenset(
    {b"ftyp", b"styp", b"moov", b"moof", b"mdat", b"free", b"skip", b"sidx", b"mfra", b"udta",
     b"meta", b"emsg", b"prft", b"uuid", b"wide", b"pdin", b"ssix"}
)  # fmt: skip


@dataclass(slots=True)
class _Track:
    track_id: int = 0
    handler: bytes = b""
    timescale: int = 0
    setup: CodecSetup | None = None
    entry: bytes = b""  # sample entry type, for error messages
    default_size: int = 0


@dataclass(slots=True)
class _Fragment:
    samples: list[tuple[int, int]] = field(default_factory=list)  # (stream offset, size)


class Mp4Demuxer:
    """Feed fragmented-MP4 bytes in any pieces; get CodecSetup and AudioPacket events."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._offset = 0  # stream offset of _buf[0]
        self._skip_left = 0  # bytes of an unneeded box still to discard
        self._track: _Track | None = None
        self._pending: list[tuple[int, int]] = []  # samples announced by the last moof
        self._saw_moof = False

    def feed(self, data: bytes) -> list[DemuxEvent]:
        events: list[DemuxEvent] = []
        if self._skip_left:
            dropped = min(self._skip_left, len(data))
            self._skip_left -= dropped
            self._offset += dropped
            data = data[dropped:]
        self._buf += data
        buf = self._buf
        pos = 0
        while True:
            avail = len(buf) - pos
            if avail < 8:
                break
            size, kind = struct.unpack_from(">I4s", buf, pos)
            header = 8
            if size == 1:
                if avail < 16:
                    break
                size = struct.unpack_from(">Q", buf, pos + 8)[0]
                header = 16
            if size == 0:
                raise MediaError(f"MP4 box {_name(kind)} of unbounded size")
            if size < header:
                raise MediaError(f"MP4 box {_name(kind)} has an impossible size {size}")
            if kind not in _TOP_LEVEL:
                raise MediaError(f"not an MP4 box at offset {self._offset + pos}: {_name(kind)}")
            if kind not in _BUFFERED:
                if avail >= size:
                    pos += size
                    continue
                self._skip_left = size - avail
                pos = len(buf)
                break
            if size > MAX_BOX_BYTES:
                raise MediaError(f"MP4 box {_name(kind)} of {size} bytes exceeds {MAX_BOX_BYTES}")
            if avail < size:
                break
            body = bytes(buf[pos + header : pos + size])
            self._box(kind, self._offset + pos, header, body, events)
            pos += size
        del buf[:pos]
        self._offset += pos
        return events

    def close(self) -> list[DemuxEvent]:
        if self._buf or self._skip_left:
            raise MediaError("MP4 stream truncated inside a box")
        return []

    def _box(
        self, kind: bytes, offset: int, header: int, body: bytes, out: list[DemuxEvent]
    ) -> None:
        try:
            if kind == b"moov":
                self._track = _parse_moov(body)
                self._saw_moof = False
                assert self._track.setup is not None
                out.append(self._track.setup)
            elif kind == b"moof":
                if self._track is None:
                    raise MediaError("MP4 fragment before the moov box")
                self._pending = _parse_moof(body, offset, self._track)
                self._saw_moof = True
            elif kind == b"mdat":
                if self._track is None:
                    raise MediaError("MP4 media data before the moov box (not a fragmented MP4)")
                if not self._saw_moof:
                    raise MediaError("MP4 media data without a moof box (not a fragmented MP4)")
                start = offset + header
                end = start + len(body)
                for sample_offset, size in self._pending:
                    if sample_offset < start or sample_offset + size > end:
                        raise MediaError("MP4 sample lies outside the following mdat")
                    if size:  # an empty packet would tell FFmpeg "end of stream"
                        at = sample_offset - start
                        out.append(AudioPacket(body[at : at + size]))
                self._pending = []
        except (struct.error, IndexError) as exc:
            raise MediaError(f"malformed MP4 {_name(kind)} box: {exc}") from None


def _name(kind: bytes) -> str:
    return repr(kind.decode("latin-1"))


def _children(body: bytes, start: int = 0) -> list[tuple[bytes, bytes]]:
    """The boxes inside a container box's payload."""
    out: list[tuple[bytes, bytes]] = []
    pos = start
    while pos + 8 <= len(body):
        size, kind = struct.unpack_from(">I4s", body, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", body, pos + 8)[0]
            header = 16
        elif size == 0:
            size = len(body) - pos
        if size < header or pos + size > len(body):
            raise MediaError(f"MP4 box {_name(kind)} overruns its parent")
        out.append((kind, body[pos + header : pos + size]))
        pos += size
    return out


def _parse_moov(body: bytes) -> _Track:
    tracks: list[_Track] = []
    trex: dict[int, int] = {}
    for kind, payload in _children(body):
        if kind == b"trak":
            track = _Track()
            _walk_trak(payload, track)
            tracks.append(track)
        elif kind == b"mvex":
            for sub, sub_payload in _children(payload):
                if sub == b"trex":
                    track_id, _desc, _dur, size = struct.unpack_from(">IIII", sub_payload, 4)
                    trex[track_id] = size
    audio = [t for t in tracks if t.handler == b"soun"]
    if not audio:
        raise MediaError("MP4 has no audio track")
    supported = [t for t in audio if t.setup is not None]
    if not supported:
        raise MediaError(f"unsupported MP4 audio codec {_name(audio[0].entry)}")
    track = supported[0]
    track.default_size = trex.get(track.track_id, 0)
    return track


def _walk_trak(body: bytes, track: _Track) -> None:
    for kind, payload in _children(body):
        if kind in _CONTAINERS:
            _walk_trak(payload, track)
        elif kind == b"tkhd":
            version = payload[0]
            track.track_id = struct.unpack_from(">I", payload, 20 if version == 1 else 12)[0]
        elif kind == b"hdlr":
            track.handler = payload[8:12]
        elif kind == b"mdhd":
            version = payload[0]
            track.timescale = struct.unpack_from(">I", payload, 20 if version == 1 else 12)[0]
        elif kind == b"stsd":
            entries = _children(payload, 8)
            if entries:
                track.entry, entry = entries[0]
                if track.handler == b"soun":
                    track.setup = _sample_entry(track.entry, entry)


def _sample_entry(kind: bytes, entry: bytes) -> CodecSetup | None:
    """AudioSampleEntry (ISO 14496-12 §12.2.3): channel count and rate, then codec boxes."""
    version = struct.unpack_from(">H", entry, 8)[0]
    channels = struct.unpack_from(">H", entry, 16)[0]
    rate = struct.unpack_from(">I", entry, 24)[0] >> 16
    children_at = 28 + (16 if version == 1 else 36 if version == 2 else 0)
    boxes = dict(_children(entry, children_at))
    if kind == b"Opus":
        dops = boxes.get(b"dOps")
        if dops is None:
            raise MediaError("MP4 Opus track without a dOps box")
        return CodecSetup("opus", 48000, dops[1] or channels, _opus_head_from_dops(dops))
    if kind == b"mp4a":
        esds = boxes.get(b"esds")
        if esds is None:
            raise MediaError("MP4 AAC track without an esds box")
        object_type, asc = _decoder_config(esds[4:])
        if object_type != 0x40:
            return None  # MP3 or another MPEG audio: not something a browser records
        return CodecSetup("aac", rate or 48000, channels or 2, asc)
    return None


def _opus_head_from_dops(dops: bytes) -> bytes:
    """dOps (Opus-in-ISOBMFF §4.3.2, big-endian) to OpusHead (RFC 7845 §5.1, little-endian)."""
    _version, channels, pre_skip, rate, gain, family = struct.unpack_from(">BBHIhB", dops, 0)
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, rate, gain, family)
    if family:
        head += dops[11 : 11 + 2 + channels]
    return head


def _decoder_config(descriptors: bytes) -> tuple[int, bytes | None]:
    """Find DecoderConfigDescriptor (tag 4) and its DecoderSpecificInfo (tag 5) in an esds."""
    object_type = 0
    asc: bytes | None = None
    pos = 0
    end = len(descriptors)
    while pos < end:
        tag = descriptors[pos]
        pos += 1
        length = 0
        for _ in range(4):
            byte = descriptors[pos]
            pos += 1
            length = (length << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        if tag == 3:  # ES_Descriptor: ES_ID, flags, then nested descriptors
            flags = descriptors[pos + 2]
            pos += 3 + (2 if flags & 0x80 else 0)
            if flags & 0x40:
                pos += 1 + descriptors[pos]
            if flags & 0x20:
                pos += 2
            continue
        if tag == 4:
            object_type = descriptors[pos]
            pos += 13
            continue
        if tag == 5:
            asc = bytes(descriptors[pos : pos + length])
        pos += length
    return object_type, asc


def _parse_moof(body: bytes, moof_offset: int, track: _Track) -> list[tuple[int, int]]:
    samples: list[tuple[int, int]] = []
    for kind, traf in _children(body):
        if kind != b"traf":
            continue
        boxes = _children(traf)
        tfhd = next((p for k, p in boxes if k == b"tfhd"), None)
        if tfhd is None:
            raise MediaError("MP4 traf without tfhd")
        flags = int.from_bytes(tfhd[1:4], "big")
        track_id = struct.unpack_from(">I", tfhd, 4)[0]
        if track_id != track.track_id:
            continue
        pos = 8
        base = moof_offset
        if flags & 0x01:
            base = struct.unpack_from(">Q", tfhd, pos)[0]
            pos += 8
        if flags & 0x02:
            pos += 4
        if flags & 0x08:
            pos += 4
        default_size = track.default_size
        if flags & 0x10:
            default_size = struct.unpack_from(">I", tfhd, pos)[0]
        for run_kind, trun in boxes:
            if run_kind != b"trun":
                continue
            samples.extend(_parse_trun(trun, base, default_size))
    return samples


def _parse_trun(trun: bytes, base: int, default_size: int) -> list[tuple[int, int]]:
    flags = int.from_bytes(trun[1:4], "big")
    count = struct.unpack_from(">I", trun, 4)[0]
    pos = 8
    data_offset = 0
    if flags & 0x001:
        data_offset = struct.unpack_from(">i", trun, pos)[0]
        pos += 4
    if flags & 0x004:
        pos += 4
    per_sample = 4 * bin(flags & 0xF00).count("1")
    if count > MAX_SAMPLES_PER_RUN:
        raise MediaError(f"MP4 trun lists {count} samples")
    if count * per_sample > len(trun) - pos:
        raise MediaError("MP4 trun lists more samples than it holds")
    at = base + data_offset
    out: list[tuple[int, int]] = []
    for _ in range(count):
        if flags & 0x100:
            pos += 4
        size = default_size
        if flags & 0x200:
            size = struct.unpack_from(">I", trun, pos)[0]
            pos += 4
        if flags & 0x400:
            pos += 4
        if flags & 0x800:
            pos += 4
        out.append((at, size))
        at += size
    return out
