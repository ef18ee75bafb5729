"""`FragmentWriter`: timestamped PCM in, PutMedia body bytes out (sans-I/O, on `kvs_ingest.mkv`).

Layout (KVS-PROTOCOL.md, "MKV that KVS accepts"): per connection the EBML header, a Segment of
unknown size, Info and Tracks (`connection_header`); per fragment a Tags element with the
fragment metadata, then an unknown-size Cluster whose Timecode is absolute milliseconds, then
SimpleBlocks of `block_ms` each (key frames, timecodes relative to the Cluster and strictly
increasing). A fragment is cut at the end of the write that brings it to `fragment_ms` (at most
`max_fragment_ms`), or early by `close()` (speaker gone, idle, a gap). Blocks are emitted as
soon as they are full (the ledger holds them; `SendCursor` sends a fragment once it is closed).

Cutting at the end of a write rather than at exactly `fragment_ms` keeps each speaker message's
audio in one fragment, so the message is acked when that fragment is PERSISTED instead of
waiting for the next one (up to a whole fragment more). Timecodes follow an absolute sample
position: a block's timecode is its first sample's millisecond (rounded down), so fragments
of any sample count join without a gap or a creeping offset.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvs_ingest.kvs.limits import (
    BYTES_PER_SAMPLE,
    CODEC_ID,
    MAX_FRAGMENT_MS,
    MIME_TYPE,
    SAMPLE_RATE,
    SAMPLES_PER_MS,
    TAG_END_OF_FRAGMENT,
    TAG_MIME_TYPE,
    TAG_SESSION_ID,
)
from kvs_ingest.mkv import writer as mkv

TRACK = 1
DEFAULT_BLOCK_MS = 40


def connection_header(segment_uid: bytes) -> bytes:
    """What every PutMedia body starts with; the SegmentUID stays the same across reconnects."""
    track = mkv.AudioTrack(
        number=TRACK,
        uid=1,
        codec_id=CODEC_ID,
        sampling_frequency=float(SAMPLE_RATE),
        channels=1,
        bit_depth=16,
        name="audio",
    )
    return b"".join(
        (mkv.ebml_header(), mkv.segment_header(), mkv.info(segment_uid), mkv.tracks(track))
    )


END_OF_FRAGMENT = mkv.tags([(TAG_END_OF_FRAGMENT, "")])
"""Tells KVS the open fragment is complete without starting another or ending the body."""


def retime(data: bytes | bytearray, old_timecode: int, new_timecode: int) -> bytearray:
    """A fragment's bytes with its Cluster Timecode moved from `old_timecode` to `new_timecode`.

    Block timecodes are relative to the Cluster, so this moves the whole fragment. The fragment
    starts with its metadata Tags, then the Cluster header `FragmentWriter` wrote; raises
    ValueError when that header is not where it should be.
    """
    head = mkv.cluster_header(old_timecode)
    at = bytes(data[: len(head) + 4096]).find(head)
    if at < 0:
        raise ValueError(f"no Cluster with timecode {old_timecode} at the fragment's start")
    out = bytearray(data[:at])
    out += mkv.cluster_header(new_timecode)
    out += data[at + len(head) :]
    return out


@dataclass(frozen=True, slots=True)
class FragmentPiece:
    """Bytes for one fragment, produced by one `write` or `close` call.

    `opened`: `data` starts the fragment (metadata Tags + Cluster header). `closed`: the fragment
    is complete after `data`. `samples`: input samples this piece took into the fragment
    (including ones still held for the next block).
    """

    timecode: int
    data: bytes
    samples: int
    opened: bool
    closed: bool
    duration_ms: int  # of the fragment so far (whole duration when closed)

    def __post_init__(self) -> None:
        if self.samples < 0 or self.timecode < 0:
            raise ValueError("negative sample count or timecode")
        if self.opened and not self.data:
            raise ValueError("an opening piece carries the Cluster header")


class FragmentWriter:
    """Cuts a PCM stream (16 kHz mono s16le) into fragments on an absolute millisecond timeline.

    `anchor(ms)` places the next sample (never backwards); `write(pcm)` appends samples and
    returns the pieces they produced; `close()` ends the open fragment. Timecodes come from
    sample counts only: the writer reads no clock. With the default `max_fragment_ms`
    (= `fragment_ms`) every full fragment is exactly `fragment_ms` long.
    """

    def __init__(
        self,
        session_id: str,
        *,
        start_ms: int,
        fragment_ms: int = 1000,
        max_fragment_ms: int | None = None,
        block_ms: int = DEFAULT_BLOCK_MS,
    ) -> None:
        if not 1 <= fragment_ms <= MAX_FRAGMENT_MS:
            raise ValueError(f"fragment_ms must be within 1..{MAX_FRAGMENT_MS}")
        max_ms = fragment_ms if max_fragment_ms is None else max_fragment_ms
        if not fragment_ms <= max_ms <= MAX_FRAGMENT_MS:
            raise ValueError(f"max_fragment_ms must be within fragment_ms..{MAX_FRAGMENT_MS}")
        if not 1 <= block_ms <= fragment_ms:
            raise ValueError("block_ms must be within 1..fragment_ms")
        self._tags = mkv.tags([(TAG_MIME_TYPE, MIME_TYPE), (TAG_SESSION_ID, session_id)])
        self._fragment_samples = fragment_ms * SAMPLES_PER_MS
        self._max_samples = max_ms * SAMPLES_PER_MS
        self._block_samples = block_ms * SAMPLES_PER_MS
        # Absolute sample positions (ms * SAMPLES_PER_MS): of the next sample when no fragment
        # is open, of the open fragment's first sample otherwise.
        self._next_pos = start_ms * SAMPLES_PER_MS
        self._open_pos = 0
        self._open_tc: int | None = None
        self._last_block_tc = -1  # timecode of the last block written (next Cluster is after)
        self._samples = 0  # samples accepted into the open fragment
        self._blocked = 0  # of which already written as blocks
        self._pending = bytearray()  # accepted, not yet a block
        self._odd = b""  # half a sample left over from the last write

    @property
    def is_open(self) -> bool:
        return self._open_tc is not None

    @property
    def end_ms(self) -> int:
        """The earliest timecode the next sample can have (ms, rounded up)."""
        end = self._next_pos if self._open_tc is None else self._open_pos + self._samples
        return -(-end // SAMPLES_PER_MS)

    @property
    def open_timecode(self) -> int | None:
        return self._open_tc

    @property
    def open_samples(self) -> int:
        return self._samples

    def anchor(self, timecode_ms: int) -> list[FragmentPiece]:
        """Place the next sample at `timecode_ms` (a gap or a drift correction).

        Moving forward past the open fragment's end closes it first; a time before `end_ms` is
        clamped to it (timecodes never go backwards: KVS error 4004).
        """
        if timecode_ms <= self.end_ms:
            return []
        pieces = self.close()
        self._next_pos = timecode_ms * SAMPLES_PER_MS
        return pieces

    def shift(self, delta_ms: int) -> None:
        """Move the open fragment and everything after it `delta_ms` later (the ledger moved
        its copy of the open fragment's bytes the same way: `retime`)."""
        if delta_ms < 0:
            raise ValueError("timecodes never go backwards")
        if self._open_tc is not None:
            self._open_tc += delta_ms
            self._open_pos += delta_ms * SAMPLES_PER_MS
            self._last_block_tc += delta_ms
        self._next_pos += delta_ms * SAMPLES_PER_MS

    def write(self, pcm: bytes) -> list[FragmentPiece]:
        if self._odd:
            pcm = self._odd + pcm
            self._odd = b""
        if len(pcm) % BYTES_PER_SAMPLE:
            self._odd = pcm[-1:]
            pcm = pcm[:-1]
        pieces: list[FragmentPiece] = []
        view = memoryview(pcm)
        while view:
            opened = self._open_tc is None
            head = b""
            if self._open_tc is None:
                self._open()
                assert self._open_tc is not None
                head = self._tags + mkv.cluster_header(self._open_tc)
            tc = self._open_tc
            room = (self._max_samples - self._samples) * BYTES_PER_SAMPLE
            take, view = view[:room], view[room:]
            self._pending += take
            taken = len(take) // BYTES_PER_SAMPLE
            self._samples += taken
            body = self._blocks(final=False)
            if self._samples >= self._fragment_samples:
                pieces.append(self._finish(head + body, taken, opened))
            else:
                pieces.append(
                    FragmentPiece(tc, head + body, taken, opened, False, self.end_ms - tc)
                )
        return pieces

    def close(self) -> list[FragmentPiece]:
        """End the open fragment (writing its last, shorter block); no-op when none is open."""
        if self._open_tc is None:
            return []
        return [self._finish(self._blocks(final=True), 0, False)]

    def _open(self) -> None:
        # The Cluster starts at its first sample's millisecond, after the previous fragment's
        # last block (a final block under 1 ms can share that millisecond: move on by < 1 ms).
        tc = self._next_pos // SAMPLES_PER_MS
        if tc <= self._last_block_tc:
            tc = self._last_block_tc + 1
            self._next_pos = tc * SAMPLES_PER_MS
        self._open_tc = tc
        self._open_pos = self._next_pos

    def _finish(self, data: bytes, samples: int, opened: bool) -> FragmentPiece:
        assert self._open_tc is not None
        if self._pending:
            data += self._blocks(final=True)
        tc = self._open_tc
        piece = FragmentPiece(tc, data, samples, opened, True, self.end_ms - tc)
        self._next_pos = self._open_pos + self._samples
        self._open_tc = None
        self._samples = self._blocked = 0
        return piece

    def _blocks(self, *, final: bool) -> bytes:
        assert self._open_tc is not None
        out = []
        size = self._block_samples * BYTES_PER_SAMPLE
        while len(self._pending) >= size or (final and self._pending):
            chunk = bytes(self._pending[:size])
            del self._pending[:size]
            block_tc = (self._open_pos + self._blocked) // SAMPLES_PER_MS
            out.append(mkv.simple_block(TRACK, block_tc - self._open_tc, chunk, keyframe=True))
            self._last_block_tc = block_tc
            self._blocked += len(chunk) // BYTES_PER_SAMPLE
        return b"".join(out)
