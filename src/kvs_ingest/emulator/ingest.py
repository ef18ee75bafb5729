"""PutMedia body parser (sans-I/O): MKV bytes in, fragment events out.

Feed the request body in pieces of any size with `feed`; call `close` when the body ends. Each
Cluster is one fragment (KVS-PROTOCOL.md): `FragmentStarted` when its Timecode arrives (the
BUFFERING ack), `FragmentComplete` when it ends — the next Cluster or a Tags element starts (the
producer's AWS_KINESISVIDEO_END_OF_FRAGMENT tag among them), or the body ends. A broken KVS rule
yields one `IngestFailed` with the ack's error id, after which the parser yields nothing more.

The fragment is re-encoded from the parsed elements (known sizes, no Position/PrevSize) so the
stored bytes do not depend on how the producer framed them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvs_ingest.emulator import limits
from kvs_ingest.mkv import ID, EbmlReader, Leaf, MasterEnd, MasterStart, MkvError
from kvs_ingest.mkv.reader import parse_block, read_float, read_string, read_uint
from kvs_ingest.mkv.writer import element

END_OF_FRAGMENT_TAG = "AWS_KINESISVIDEO_END_OF_FRAGMENT"
_CAPTURED = frozenset({ID.EBML, ID.INFO, ID.TRACKS, ID.TAGS})
_DROPPED_IN_CLUSTER = frozenset({ID.POSITION, ID.PREV_SIZE, ID.VOID, ID.CRC32})


@dataclass(frozen=True, slots=True)
class TrackInfo:
    number: int
    codec_id: str
    sampling_frequency: float | None = None
    channels: int = 1
    bit_depth: int | None = None

    def frame_ms(self, frame: bytes) -> float:
        """A PCM frame's duration; 0 for codecs whose frame duration we cannot know."""
        if self.codec_id.startswith("A_PCM") and self.sampling_frequency and self.bit_depth:
            samples = len(frame) / (self.channels * self.bit_depth / 8)
            return samples * 1000.0 / self.sampling_frequency
        return 0.0


@dataclass(frozen=True, slots=True)
class FragmentStarted:
    timecode: int  # the Cluster's Timecode in milliseconds, as the acks report it


@dataclass(frozen=True, slots=True)
class FragmentComplete:
    timecode: int  # Cluster Timecode, ms
    first_ms: int  # earliest frame, ms on the Cluster's timeline
    last_ms: int  # latest frame start, ms
    duration_ms: int
    header: bytes  # Info + Tracks, re-encoded
    tags: tuple[tuple[str, str], ...]  # the producer's fragment metadata
    cluster: bytes  # the Cluster, known size
    frames: int

    def __post_init__(self) -> None:
        if self.last_ms < self.first_ms or self.duration_ms < 0:
            raise ValueError("fragment frames out of order")


@dataclass(frozen=True, slots=True)
class IngestFailed:
    error_id: int
    message: str


IngestEvent = FragmentStarted | FragmentComplete | IngestFailed


@dataclass(slots=True)
class _Node:
    id: int
    parts: list[bytes] = field(default_factory=list)
    leaves: list[tuple[int, bytes]] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)

    def encode(self) -> bytes:
        return element(self.id, b"".join(self.parts))


@dataclass(slots=True)
class _Cluster:
    timecode: int | None = None
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    first: float | None = None
    last: float = 0.0
    end: float = 0.0
    frames: int = 0
    tracks_seen: set[int] = field(default_factory=set)


class _Fail(Exception):
    def __init__(self, error_id: int, message: str) -> None:
        super().__init__(message)
        self.error_id = error_id


class PutMediaParser:
    """One per PutMedia connection. Unusable after it yielded `IngestFailed`."""

    def __init__(
        self,
        *,
        max_fragment_ms: int = limits.MAX_FRAGMENT_MS,
        max_fragment_bytes: int = limits.MAX_FRAGMENT_BYTES,
    ) -> None:
        self._reader = EbmlReader(max_element_size=max_fragment_bytes + 1024)
        self._max_ms = max_fragment_ms
        self._max_bytes = max_fragment_bytes
        self._open: list[int] = []  # ids of the open masters, outermost first
        self._capture: list[_Node] = []
        self._ignore_depth = 0  # > 0 while inside a Segment child we do not keep
        self._seen_ebml = False
        self._seen_segment = False
        self._segment_ended = False
        self._scale = 1_000_000
        self._info: bytes | None = None
        self._tracks_raw: bytes | None = None
        self.tracks: dict[int, TrackInfo] = {}
        self._pending_tags: list[tuple[str, str]] = []
        self._cluster: _Cluster | None = None
        self._failed = False
        self.end_of_fragment_tags = 0

    @property
    def in_fragment(self) -> bool:
        return self._cluster is not None and self._cluster.timecode is not None

    def feed(self, data: bytes) -> list[IngestEvent]:
        if self._failed:
            return []
        out: list[IngestEvent] = []
        try:
            for event in self._reader.feed(data):
                self._on_event(event, out)
        except MkvError as exc:
            self._fail(out, limits.ERR_INVALID_MKV, f"invalid MKV: {exc}")
        except _Fail as exc:
            self._fail(out, exc.error_id, str(exc))
        return out

    def close(self) -> list[IngestEvent]:
        """End of body: completes the open fragment, if any."""
        if self._failed:
            return []
        out: list[IngestEvent] = []
        try:
            for event in self._reader.close():
                self._on_event(event, out)
        except MkvError as exc:
            self._fail(out, limits.ERR_INVALID_MKV, f"body ends inside an element: {exc}")
        except _Fail as exc:
            self._fail(out, exc.error_id, str(exc))
        return out

    def _fail(self, out: list[IngestEvent], error_id: int, message: str) -> None:
        self._failed = True
        out.append(IngestFailed(error_id, message))

    # --- events -------------------------------------------------------------------------

    def _on_event(self, event: MasterStart | MasterEnd | Leaf, out: list[IngestEvent]) -> None:
        if isinstance(event, MasterStart):
            self._on_start(event, out)
            self._open.append(event.id)
        elif isinstance(event, MasterEnd):
            if self._open:
                self._open.pop()
            self._on_end(event, out)
        else:
            self._on_leaf(event, out)

    def _on_start(self, event: MasterStart, out: list[IngestEvent]) -> None:
        if self._capture:
            self._capture.append(_Node(event.id))
            return
        if self._ignore_depth:
            self._ignore_depth += 1
            return
        parent = self._open[-1] if self._open else None
        if parent is None:
            if event.id == ID.EBML:
                if self._seen_ebml:
                    raise _Fail(limits.ERR_INVALID_MKV, "more than one EBML header")
                self._seen_ebml = True
                self._capture.append(_Node(event.id))
            elif event.id == ID.SEGMENT:
                if not self._seen_ebml or self._seen_segment:
                    raise _Fail(limits.ERR_INVALID_MKV, "Segment without EBML header, or twice")
                self._seen_segment = True
            else:
                raise _Fail(limits.ERR_INVALID_MKV, f"element 0x{event.id:X} at top level")
            return
        if parent == ID.SEGMENT:
            if event.id in (ID.INFO, ID.TRACKS, ID.TAGS):
                self._capture.append(_Node(event.id))
            elif event.id == ID.CLUSTER:
                if not self.tracks:
                    raise _Fail(limits.ERR_INVALID_MKV, "Cluster before Tracks")
                if len(self._pending_tags) > limits.MAX_FRAGMENT_TAGS:
                    raise _Fail(limits.ERR_METADATA_LIMIT, "more than 10 fragment metadata tags")
                self._cluster = _Cluster()
            else:
                self._ignore_depth = 1  # SeekHead, Cues, Chapters...: not stored
            return
        if parent == ID.CLUSTER and event.id == ID.BLOCK_GROUP:
            self._capture.append(_Node(event.id))
            return
        self._ignore_depth = 1

    def _on_leaf(self, event: Leaf, out: list[IngestEvent]) -> None:
        if self._capture:
            node = self._capture[-1]
            node.parts.append(element(event.id, event.data))
            node.leaves.append((event.id, event.data))
            return
        if self._ignore_depth:
            return
        parent = self._open[-1] if self._open else None
        if parent == ID.CLUSTER and self._cluster is not None:
            self._on_cluster_leaf(event, out)
        elif parent is None and event.id not in (ID.VOID, ID.CRC32):
            raise _Fail(limits.ERR_INVALID_MKV, f"element 0x{event.id:X} at top level")

    def _on_end(self, event: MasterEnd, out: list[IngestEvent]) -> None:
        if self._capture:
            node = self._capture.pop()
            if self._capture:
                parent = self._capture[-1]
                parent.parts.append(node.encode())
                parent.children.append(node)
            else:
                self._on_captured(node, out)
            return
        if self._ignore_depth:
            self._ignore_depth -= 1
            return
        if event.id == ID.CLUSTER and self._cluster is not None:
            self._complete(out)
        elif event.id == ID.SEGMENT:
            self._segment_ended = True

    # --- elements -----------------------------------------------------------------------

    def _on_captured(self, node: _Node, out: list[IngestEvent]) -> None:
        if node.id == ID.EBML:
            doc = next((read_string(d) for i, d in node.leaves if i == ID.DOC_TYPE), "matroska")
            if doc not in ("matroska", "webm"):
                raise _Fail(limits.ERR_INVALID_MKV, f"DocType {doc!r}")
        elif node.id == ID.INFO:
            for leaf_id, data in node.leaves:
                if leaf_id == ID.TIMECODE_SCALE:
                    self._scale = read_uint(data) or 1_000_000
            self._info = node.encode()
        elif node.id == ID.TRACKS:
            self._on_tracks(node)
        elif node.id == ID.TAGS:
            self._on_tags(node)
        elif node.id == ID.BLOCK_GROUP:
            block = next((d for i, d in node.leaves if i == ID.BLOCK), None)
            if block is None:
                raise _Fail(limits.ERR_INVALID_MKV, "BlockGroup without a Block")
            self._add_block(block, node.encode(), out)

    def _on_tracks(self, node: _Node) -> None:
        if self.tracks:
            raise _Fail(limits.ERR_INVALID_MKV, "Tracks sent twice")
        entries = [c for c in node.children if c.id == ID.TRACK_ENTRY]
        if not entries:
            raise _Fail(limits.ERR_INVALID_MKV, "Tracks without a TrackEntry")
        if len(entries) > limits.MAX_TRACKS:
            raise _Fail(limits.ERR_TOO_MANY_TRACKS, f"{len(entries)} tracks; at most 3")
        for entry in entries:
            values = dict(entry.leaves)
            if ID.TRACK_NUMBER not in values or ID.CODEC_ID not in values:
                raise _Fail(limits.ERR_INVALID_MKV, "TrackEntry without TrackNumber or CodecID")
            audio = dict(next((c.leaves for c in entry.children if c.id == ID.AUDIO), []))
            number = read_uint(values[ID.TRACK_NUMBER])
            self.tracks[number] = TrackInfo(
                number=number,
                codec_id=read_string(values[ID.CODEC_ID]),
                sampling_frequency=(
                    read_float(audio[ID.SAMPLING_FREQUENCY])
                    if ID.SAMPLING_FREQUENCY in audio
                    else None
                ),
                channels=read_uint(audio[ID.CHANNELS]) if ID.CHANNELS in audio else 1,
                bit_depth=read_uint(audio[ID.BIT_DEPTH]) if ID.BIT_DEPTH in audio else None,
            )
        self._tracks_raw = node.encode()

    def _on_tags(self, node: _Node) -> None:
        for tag in node.children:
            for simple in tag.children:
                if simple.id != ID.SIMPLE_TAG:
                    continue
                values = dict(simple.leaves)
                name = read_string(values.get(ID.TAG_NAME, b""))
                if name == END_OF_FRAGMENT_TAG:
                    self.end_of_fragment_tags += 1
                    continue
                value = read_string(values.get(ID.TAG_STRING, b""))
                self._pending_tags.append((name, value))

    def _on_cluster_leaf(self, event: Leaf, out: list[IngestEvent]) -> None:
        cluster = self._cluster
        assert cluster is not None
        if event.id == ID.TIMECODE:
            if cluster.timecode is not None:
                raise _Fail(limits.ERR_INVALID_MKV, "two Timecodes in one Cluster")
            cluster.timecode = read_uint(event.data)
            cluster.parts.append(element(ID.TIMECODE, event.data))
            out.append(FragmentStarted(self._ms(cluster.timecode)))
        elif event.id == ID.SIMPLE_BLOCK:
            self._add_block(event.data, element(ID.SIMPLE_BLOCK, event.data), out)
        elif event.id not in _DROPPED_IN_CLUSTER:
            cluster.parts.append(element(event.id, event.data))

    def _add_block(self, data: bytes, encoded: bytes, out: list[IngestEvent]) -> None:
        cluster = self._cluster
        assert cluster is not None
        if cluster.timecode is None:
            raise _Fail(limits.ERR_INVALID_MKV, "block before the Cluster's Timecode")
        block = parse_block(data)
        track = self.tracks.get(block.track)
        if track is None:
            raise _Fail(limits.ERR_TRACK_NUMBER, f"block for track {block.track} not in Tracks")
        at = (cluster.timecode + block.timecode) * self._scale / 1_000_000
        cluster.first = at if cluster.first is None else min(cluster.first, at)
        cluster.last = max(cluster.last, at)
        cluster.end = max(cluster.end, at + sum(track.frame_ms(f) for f in block.frames))
        cluster.frames += len(block.frames)
        cluster.tracks_seen.add(block.track)
        cluster.parts.append(encoded)
        cluster.size += len(encoded)
        if cluster.size > self._max_bytes:
            raise _Fail(limits.ERR_FRAGMENT_SIZE, "fragment over the size limit")
        if cluster.last - cluster.first > self._max_ms:
            raise _Fail(limits.ERR_FRAGMENT_DURATION, "fragment over the duration limit")

    def _complete(self, out: list[IngestEvent]) -> None:
        cluster, self._cluster = self._cluster, None
        assert cluster is not None
        if cluster.timecode is None:
            raise _Fail(limits.ERR_INVALID_MKV, "Cluster without a Timecode")
        missing = set(self.tracks) - cluster.tracks_seen
        if missing:
            raise _Fail(
                limits.ERR_TRACK_WITHOUT_FRAMES, f"no frames for track(s) {sorted(missing)}"
            )
        assert self._info is not None or self._tracks_raw is not None
        first = cluster.first if cluster.first is not None else 0.0
        tags, self._pending_tags = tuple(self._pending_tags), []
        out.append(
            FragmentComplete(
                timecode=self._ms(cluster.timecode),
                first_ms=int(first),
                last_ms=int(cluster.last),
                duration_ms=round(max(cluster.end, cluster.last) - first),
                header=(self._info or b"") + (self._tracks_raw or b""),
                tags=tags,
                cluster=element(ID.CLUSTER, b"".join(cluster.parts)),
                frames=cluster.frames,
            )
        )

    def _ms(self, timecode: int) -> int:
        return timecode * self._scale // 1_000_000
