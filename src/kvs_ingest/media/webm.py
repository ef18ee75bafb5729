"""WebM/Matroska audio demuxer on the incremental EBML reader, sans-I/O.

What Chrome, Edge and Firefox MediaRecorders write: an unknown-size Segment, unknown-size
Clusters, SimpleBlocks (possibly laced) of Opus, or float/integer PCM (`codecs=pcm`). The first
audio track is used, whatever its number (Firefox numbers it 2). For Opus the decoder is set up
from CodecPrivate (OpusHead): it decodes at 48 kHz whatever SamplingFrequency says (Firefox
writes 44100) and trims pre-skip. A new EBML header mid-stream (the page restarted its
recorder) starts a new segment.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from kvs_ingest.media.errors import MediaError
from kvs_ingest.media.events import AudioPacket, CodecSetup, DemuxEvent
from kvs_ingest.media.ogg import parse_opus_head
from kvs_ingest.mkv import (
    ID,
    EbmlReader,
    Leaf,
    MasterEnd,
    MasterStart,
    MkvError,
    parse_block,
    read_float,
    read_sint,
    read_string,
    read_uint,
)

MAX_ELEMENT_BYTES = 1 << 20  # a browser block is a few KiB (Chrome PCM: 3.5 KiB)
_DOC_TYPES = frozenset({"webm", "matroska"})
_TRACK_AUDIO = 2


@dataclass(slots=True)
class _TrackEntry:
    number: int = 0
    type: int = 0
    codec_id: str = ""
    codec_private: bytes | None = None
    codec_delay_ns: int = 0
    sampling_frequency: float = 8000.0  # the Matroska default
    channels: int = 1  # the Matroska default
    bit_depth: int = 0
    encoded: bool = False  # ContentEncodings: compressed or encrypted


class WebmDemuxer:
    """Feed WebM/Matroska bytes in any pieces; get CodecSetup and AudioPacket events."""

    def __init__(self) -> None:
        self._reader = EbmlReader(max_element_size=MAX_ELEMENT_BYTES)
        self._entries: list[_TrackEntry] = []
        self._entry: _TrackEntry | None = None
        self._track: int | None = None  # the audio track being decoded
        self._seen_ebml = False
        self._rate = 48000  # the chosen track's decode rate, for DiscardPadding
        self._group_frames: list[bytes] = []  # a BlockGroup's Block, until the group ends
        self._group_discard_ns = 0

    def feed(self, data: bytes) -> list[DemuxEvent]:
        try:
            return self._handle(self._reader.feed(data))
        except MkvError as exc:
            raise MediaError(f"malformed WebM: {exc}") from None

    def close(self) -> list[DemuxEvent]:
        try:
            return self._handle(self._reader.close())
        except MkvError as exc:
            raise MediaError(f"WebM stream truncated: {exc}") from None

    def _handle(self, events: list[MasterStart | MasterEnd | Leaf]) -> list[DemuxEvent]:
        out: list[DemuxEvent] = []
        for event in events:
            if type(event) is Leaf:
                self._leaf(event, out)
            elif type(event) is MasterStart:
                self._start(event)
            elif type(event) is MasterEnd:
                self._end(event, out)
        return out

    def _start(self, event: MasterStart) -> None:
        kind = event.id
        if kind == ID.EBML:
            # The first header, or a restarted recorder: forget the old tracks.
            self._seen_ebml = True
            self._entries = []
            self._track = None
        elif not self._seen_ebml:
            raise MediaError("WebM stream does not start with an EBML header")
        elif kind == ID.TRACK_ENTRY:
            self._entry = _TrackEntry()
        elif kind == ID.CONTENT_ENCODINGS and self._entry is not None:
            self._entry.encoded = True
        elif kind == ID.CLUSTER and self._track is None:
            raise MediaError(self._no_audio_reason())
        elif kind == ID.BLOCK_GROUP:
            self._group_frames = []
            self._group_discard_ns = 0

    def _end(self, event: MasterEnd, out: list[DemuxEvent]) -> None:
        if event.id == ID.TRACK_ENTRY and self._entry is not None:
            self._entries.append(self._entry)
            self._entry = None
        elif event.id == ID.TRACKS and self._track is None:
            setup, number = self._choose()
            self._track = number
            self._rate = setup.sample_rate
            out.append(setup)
        elif event.id == ID.BLOCK_GROUP and self._group_frames:
            frames, self._group_frames = self._group_frames, []
            # DiscardPadding (Matroska §5.1.3.5.4): nanoseconds of padding at the block's end.
            discard = max(0, round(self._group_discard_ns * self._rate / 1e9))
            out.extend(AudioPacket(frame) for frame in frames[:-1])
            out.append(AudioPacket(frames[-1], discard))

    def _leaf(self, event: Leaf, out: list[DemuxEvent]) -> None:
        kind = event.id
        if not self._seen_ebml:
            raise MediaError("WebM stream does not start with an EBML header")
        if kind == ID.SIMPLE_BLOCK or kind == ID.BLOCK:
            if self._track is None:
                raise MediaError(self._no_audio_reason())
            block = parse_block(event.data)
            if block.track == self._track:
                frames = [frame for frame in block.frames if frame]
                if kind == ID.BLOCK:
                    self._group_frames.extend(frames)
                else:
                    out.extend(AudioPacket(frame) for frame in frames)
            return
        if kind == ID.DISCARD_PADDING:
            self._group_discard_ns = read_sint(event.data)
            return
        if kind == ID.DOC_TYPE:
            doc_type = read_string(event.data)
            if doc_type not in _DOC_TYPES:
                raise MediaError(f"unsupported EBML document type {doc_type!r}")
            return
        entry = self._entry
        if entry is None:
            return
        if kind == ID.TRACK_NUMBER:
            entry.number = read_uint(event.data)
        elif kind == ID.TRACK_TYPE:
            entry.type = read_uint(event.data)
        elif kind == ID.CODEC_ID:
            entry.codec_id = read_string(event.data)
        elif kind == ID.CODEC_PRIVATE:
            entry.codec_private = event.data
        elif kind == ID.CODEC_DELAY:
            entry.codec_delay_ns = read_uint(event.data)
        elif kind == ID.SAMPLING_FREQUENCY:
            entry.sampling_frequency = read_float(event.data)
        elif kind == ID.CHANNELS:
            entry.channels = read_uint(event.data)
        elif kind == ID.BIT_DEPTH:
            entry.bit_depth = read_uint(event.data)

    def _no_audio_reason(self) -> str:
        if not self._entries:
            return "WebM media before any track description"
        return "WebM stream has no audio track"

    def _choose(self) -> tuple[CodecSetup, int]:
        audio = [e for e in self._entries if e.type == _TRACK_AUDIO]
        if not audio:
            kinds = sorted({e.codec_id for e in self._entries}) or ["none"]
            raise MediaError(f"WebM stream has no audio track (tracks: {', '.join(kinds)})")
        problems: list[str] = []
        for entry in audio:
            try:
                return _setup(entry), entry.number
            except MediaError as exc:
                problems.append(str(exc))
        raise MediaError("; ".join(problems))


_PCM_CODECS = {
    ("A_PCM/INT/LIT", 8): "pcm_u8",
    ("A_PCM/INT/LIT", 16): "pcm_s16le",
    ("A_PCM/INT/LIT", 24): "pcm_s24le",
    ("A_PCM/INT/LIT", 32): "pcm_s32le",
    ("A_PCM/INT/BIG", 8): "pcm_u8",
    ("A_PCM/INT/BIG", 16): "pcm_s16be",
    ("A_PCM/INT/BIG", 24): "pcm_s24be",
    ("A_PCM/INT/BIG", 32): "pcm_s32be",
    ("A_PCM/FLOAT/IEEE", 32): "pcm_f32le",
    ("A_PCM/FLOAT/IEEE", 64): "pcm_f64le",
}


def _setup(entry: _TrackEntry) -> CodecSetup:
    """The decoder set-up for one audio TrackEntry, or MediaError saying why not."""
    if entry.encoded:
        raise MediaError(f"WebM track {entry.number} is compressed or encrypted")
    codec_id = entry.codec_id
    if not math.isfinite(entry.sampling_frequency) or not 0 < entry.sampling_frequency < 1e6:
        raise MediaError(
            f"WebM track {entry.number} has sampling frequency {entry.sampling_frequency}"
        )
    rate = round(entry.sampling_frequency)
    if codec_id == "A_OPUS":
        head = entry.codec_private or _opus_head(entry)
        return parse_opus_head(head)
    if codec_id.startswith("A_PCM/"):
        name = _PCM_CODECS.get((codec_id, entry.bit_depth))
        if name is None:
            raise MediaError(f"unsupported WebM PCM {codec_id} at {entry.bit_depth} bits")
        return CodecSetup(name, rate, entry.channels)
    if codec_id == "A_AAC" and entry.codec_private:
        return CodecSetup("aac", rate, entry.channels, entry.codec_private)
    raise MediaError(f"unsupported WebM audio codec {codec_id or 'without CodecID'!r}")


def _opus_head(entry: _TrackEntry) -> bytes:
    """An OpusHead for a track without CodecPrivate, pre-skip taken from CodecDelay."""
    pre_skip = min(round(entry.codec_delay_ns * 48000 / 1e9), 0xFFFF)
    if entry.channels > 2:
        raise MediaError("multichannel Opus without CodecPrivate")
    return b"OpusHead" + struct.pack("<BBHIhB", 1, entry.channels, pre_skip, 48000, 0, 0)
