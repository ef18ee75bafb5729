"""`MediaExtractor` (sans-I/O): KVS GetMedia / GetMediaForFragmentList bytes in, per-fragment PCM
out.

Each fragment KVS returns is a complete MKV (EBML header, Segment, Info, Tracks, tags, one
Cluster); the extractor keeps the track table of the current fragment, takes the SimpleBlocks of
its 16 kHz mono s16 PCM track, and reports fragments whose tracks hold no such audio (a video
stream, say) with the codecs they do hold, so a caller can say so clearly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvs_ingest.kvs.limits import CODEC_ID, SAMPLE_RATE
from kvs_ingest.mkv import (
    ID,
    EbmlReader,
    Leaf,
    MasterEnd,
    MasterStart,
    parse_block,
    read_float,
    read_string,
    read_uint,
)


class MediaFormatError(Exception):
    """The media is not 16 kHz mono s16 PCM in a form we can write to a WAV file."""


@dataclass(slots=True)
class Track:
    number: int = 0
    codec_id: str = ""
    sampling_frequency: float | None = None
    channels: int = 1
    bit_depth: int | None = None

    @property
    def is_pcm16k(self) -> bool:
        return (
            self.codec_id == CODEC_ID
            and self.sampling_frequency == float(SAMPLE_RATE)
            and self.channels == 1
            and self.bit_depth in (16, None)
        )

    def describe(self) -> str:
        rate = f" {self.sampling_frequency:g} Hz" if self.sampling_frequency else ""
        return f"track {self.number}: {self.codec_id or '?'}{rate}"


@dataclass(slots=True)
class FragmentAudio:
    """One fragment's audio: `start_ms` is its Cluster timecode (absolute ms with ABSOLUTE)."""

    start_ms: int
    pcm: bytearray = field(default_factory=bytearray)
    tags: dict[str, str] = field(default_factory=dict)
    tracks: list[Track] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2

    @property
    def end_ms(self) -> float:
        return self.start_ms + self.samples * 1000 / SAMPLE_RATE

    @property
    def fragment_number(self) -> str | None:
        return self.tags.get("AWS_KINESISVIDEO_FRAGMENT_NUMBER")


class MediaExtractor:
    """`feed(bytes)` then `close()`; `fragments` (with audio) and `skipped` (without) fill up."""

    def __init__(self) -> None:
        self._reader = EbmlReader()
        self._tracks: list[Track] = []
        self._track: Track | None = None
        self._scale = 1_000_000
        self._tags: dict[str, str] = {}
        self._tag_name: str | None = None
        self._current: FragmentAudio | None = None
        self.fragments: list[FragmentAudio] = []
        self.skipped: list[FragmentAudio] = []  # clusters without a 16 kHz PCM track
        self.other_codecs: set[str] = set()
        self.error_tags: list[str] = []
        self.tags_seen = 0  # fragment metadata read (a body of tags alone is valid KVS output)

    def feed(self, data: bytes) -> None:
        for event in self._reader.feed(data):
            self._on(event)

    def close(self) -> None:
        for event in self._reader.close():
            self._on(event)

    def _on(self, event: MasterStart | MasterEnd | Leaf) -> None:
        if isinstance(event, MasterStart):
            if event.id == ID.EBML:
                self._tracks, self._tags = [], {}
            elif event.id == ID.TRACK_ENTRY:
                self._track = Track()
            elif event.id == ID.CLUSTER:
                self._current = None
            return
        if isinstance(event, MasterEnd):
            if event.id == ID.TRACK_ENTRY and self._track is not None:
                self._tracks.append(self._track)
                self._track = None
            elif event.id == ID.CLUSTER and self._current is not None:
                self._current.tags.update(self._tags)
            return
        self._leaf(event)

    def _leaf(self, leaf: Leaf) -> None:
        ident, data = leaf.id, leaf.data
        track = self._track
        if track is not None:
            if ident == ID.TRACK_NUMBER:
                track.number = read_uint(data)
            elif ident == ID.CODEC_ID:
                track.codec_id = read_string(data)
            elif ident == ID.SAMPLING_FREQUENCY:
                track.sampling_frequency = read_float(data)
            elif ident == ID.CHANNELS:
                track.channels = read_uint(data)
            elif ident == ID.BIT_DEPTH:
                track.bit_depth = read_uint(data)
            return
        if ident == ID.TIMECODE_SCALE:
            self._scale = read_uint(data)
        elif ident == ID.TAG_NAME:
            self._tag_name = read_string(data)
        elif ident == ID.TAG_STRING and self._tag_name is not None:
            value = read_string(data)
            self._tags[self._tag_name] = value
            self.tags_seen += 1
            if self._tag_name.startswith("AWS_KINESISVIDEO_ERROR"):
                self.error_tags.append(f"{self._tag_name}={value}")
            if self._current is not None:
                self._current.tags[self._tag_name] = value
        elif ident == ID.TIMECODE:
            start_ms = read_uint(data) * self._scale // 1_000_000
            frag = FragmentAudio(start_ms, tags=dict(self._tags), tracks=list(self._tracks))
            pcm = [t for t in self._tracks if t.is_pcm16k]
            if pcm:
                self.fragments.append(frag)
            else:
                self.skipped.append(frag)
                self.other_codecs.update(t.describe() for t in self._tracks)
            self._current = frag
        elif ident == ID.SIMPLE_BLOCK and self._current is not None:
            block = parse_block(data)
            numbers = {t.number for t in self._current.tracks if t.is_pcm16k}
            if block.track in numbers:
                for frame in block.frames:
                    self._current.pcm += frame


@dataclass(frozen=True, slots=True)
class Gap:
    after_ms: float  # end of the audio before the gap
    ms: float  # negative: the fragments overlap


def assemble(
    fragments: list[FragmentAudio], *, fill_gaps: bool, tolerance_ms: float = 1.0
) -> tuple[bytes, list[Gap]]:
    """Fragments sorted by time, concatenated; gaps found (and filled with silence if asked)."""
    ordered = sorted(fragments, key=lambda f: (f.start_ms, f.fragment_number or ""))
    out = bytearray()
    gaps: list[Gap] = []
    previous: FragmentAudio | None = None
    for frag in ordered:
        if previous is not None:
            gap = frag.start_ms - previous.end_ms
            if abs(gap) > tolerance_ms:
                gaps.append(Gap(previous.end_ms, gap))
                if fill_gaps and gap > 0:
                    out += bytes(2 * round(gap * SAMPLE_RATE / 1000))
        out += frag.pcm
        previous = frag
    return bytes(out), gaps
