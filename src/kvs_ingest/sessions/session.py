"""`Session` (one per session id, shared by every socket of it) and `Speaker` (one per socket).

The session owns the absolute timeline, the `FragmentWriter` that cuts the audio into fragments
and the `StreamUploader` that gets them into KVS. Speakers write PCM into it; as PERSISTED acks
arrive, each speaker is told up to which of its samples everything is safe.

Session lifecycle (changed only by the session's own methods and its ticker task):

    ACTIVE --close()--> CLOSING (no more writes; flush until PERSISTED or deadline) --> CLOSED
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import StrEnum

from kvs_ingest.kvs.fragments import FragmentPiece, FragmentWriter
from kvs_ingest.kvs.ledger import Fragment
from kvs_ingest.kvs.limits import MAX_FRAGMENT_MS, SAMPLE_RATE
from kvs_ingest.kvs.tuning import DEFAULT_TUNING, Tuning
from kvs_ingest.kvs.uploader import StreamUploader
from kvs_ingest.logging import get_logger
from kvs_ingest.sessions import metrics as sm
from kvs_ingest.sessions.errors import BufferFull, SessionClosed
from kvs_ingest.sessions.timeline import Timeline

log = get_logger(__name__)

_TICK = 0.25


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class State(StrEnum):
    ACTIVE = "active"
    CLOSING = "closing"
    CLOSED = "closed"


class Speaker:
    """One socket's audio in a session. Use `write`, then `finish` or `detach`."""

    def __init__(self, session: Session, on_persisted: Callable[[int], None]) -> None:
        self._session = session
        self._on_persisted = on_persisted
        self.samples_written = 0
        self.samples_persisted = 0
        self.attached = True
        self._persisted_event = asyncio.Event()

    async def write(self, pcm: bytes) -> None:
        """Append 16 kHz mono s16le PCM. Waits while the ledger is full (so the socket's reads
        stop); raises BufferFull after the bound, SessionClosed once the session closes."""
        await self._session._write(self, pcm)

    async def finish(self, timeout: float) -> bool:  # noqa: ASYNC109 (contract in INTERNALS.md)
        """End the open fragment and wait until every written sample is PERSISTED."""
        self._session._close_fragment()
        deadline = time.monotonic() + timeout
        while self.samples_persisted < self.samples_written:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._persisted_event.clear()
            try:
                await asyncio.wait_for(self._persisted_event.wait(), left)
            except TimeoutError:
                pass
        return True

    def detach(self) -> None:
        """The socket is gone; what it wrote stays in the ledger until PERSISTED."""
        if self.attached:
            self.attached = False
            self._session._detach(self)

    def _persisted(self, count: int) -> None:
        if count <= self.samples_persisted:
            return
        self.samples_persisted = count
        self._persisted_event.set()
        try:
            self._on_persisted(count)
        except Exception:
            log.exception("on_persisted_failed", session=self._session.id)


class Session:
    """Created by `SessionRegistry.open`; speakers come through `attach`."""

    def __init__(
        self,
        session_id: str,
        stream_name: str,
        uploader: StreamUploader,
        *,
        fragment_ms: int,
        buffer_max_seconds: float,
        grace_seconds: float,
        start_ms: int | None = None,
        first_anchor_ms: int | None = None,
        tuning: Tuning = DEFAULT_TUNING,
    ) -> None:
        self.id = session_id
        self.stream_name = stream_name
        self.uploader = uploader
        self.tuning = tuning
        self._writer = FragmentWriter(
            session_id,
            start_ms=start_ms if start_ms is not None else wall_ms(),
            fragment_ms=fragment_ms,
            max_fragment_ms=min(fragment_ms * tuning.fragment_stretch, MAX_FRAGMENT_MS),
            block_ms=tuning.block_ms,
        )
        self.timeline = Timeline(
            tolerance_ms=tuning.drift_tolerance_ms, max_step_ms=tuning.drift_max_step_ms
        )
        self._capacity = int(buffer_max_seconds * SAMPLE_RATE)
        self._grace = grace_seconds
        self._speakers: set[Speaker] = set()
        self._last_write = time.monotonic()
        self._alone_since: float | None = time.monotonic()
        self._room = asyncio.Event()
        self.state = State.ACTIVE
        self._ticker: asyncio.Task[None] | None = None
        self._log = log.bind(session=session_id, stream=stream_name)
        # When the first speaker's audio began to arrive (the registry opened the session before
        # the stream was ready): it is placed there, not at the wall clock once attached.
        self._first_anchor_ms = first_anchor_ms
        uploader.on_resolved = self._on_resolved
        uploader.on_retimed = self._on_retimed

    def start(self) -> None:
        self.uploader.start()
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(
                self._tick(), name=f"session:{self.id}"
            )

    @property
    def end_ms(self) -> int:
        """Where the session's next sample would go on the absolute timeline."""
        return self._writer.end_ms

    @property
    def speakers(self) -> int:
        return len(self._speakers)

    @property
    def idle(self) -> bool:
        """No speaker for the grace period and nothing left to flush."""
        return (
            not self._speakers
            and self._alone_since is not None
            and time.monotonic() - self._alone_since >= self._grace
            and not self.uploader.ledger.unresolved
            and not self._writer.is_open
        )

    def touch(self) -> None:
        """A socket is about to attach: keep the registry from letting the session go."""
        if self._alone_since is not None:
            self._alone_since = time.monotonic()

    def attach(self, on_persisted: Callable[[int], None]) -> Speaker:
        """A new speaker: its audio continues the session's timeline at the current wall-clock
        time, after a gap for the time nobody spoke."""
        if self.state is not State.ACTIVE:
            raise SessionClosed(f"session {self.id} is closing")
        # While another speaker streams, the new one continues its audio (its lag behind the
        # wall clock is latency, not absence); a gap is left only for time nobody spoke.
        now = wall_ms() if not self._speakers else self._writer.end_ms
        if self._first_anchor_ms is not None:
            now = min(now, self._first_anchor_ms)
            self._first_anchor_ms = None
        placement = self.timeline.attach(now, self._writer.end_ms)
        if placement.gap_ms > 0:
            self._append(self._writer.anchor(placement.anchor_ms))
            sm.GAPS.inc()
            sm.GAP_MS.inc(placement.gap_ms)
        speaker = Speaker(self, on_persisted)
        self._speakers.add(speaker)
        self._alone_since = None
        self._log.info("speaker_attached", speakers=len(self._speakers), gap_ms=placement.gap_ms)
        return speaker

    def _detach(self, speaker: Speaker) -> None:
        self._speakers.discard(speaker)
        if not self._speakers:
            self._alone_since = time.monotonic()
            self._close_fragment()
        self._log.info("speaker_detached", speakers=len(self._speakers))

    async def _write(self, speaker: Speaker, pcm: bytes) -> None:
        if self.state is not State.ACTIVE:
            raise SessionClosed(f"session {self.id} is closing")
        waited = False
        if self.uploader.ledger.buffered_samples >= self._capacity:
            await self._wait_room()
            waited = True
        if not self._writer.is_open:
            step = self.timeline.boundary()
            if self.timeline.drift_ms is not None:
                sm.DRIFT_MS.observe(self.timeline.drift_ms)
            if step > 0:
                self._append(self._writer.anchor(self._writer.end_ms + step))
                sm.DRIFT_CORRECTED_MS.inc(step)
        pieces = self._writer.write(pcm)
        self._last_write = time.monotonic()
        if waited:
            # The socket was not read while the ledger was full: the lag that built up is a
            # backlog, not a slow clock. Measure drift afresh from the next steady window.
            self.timeline.rebase()
        else:
            self.timeline.observe(wall_ms(), self._writer.end_ms)
        for piece in pieces:
            speaker.samples_written += piece.samples
            self.uploader.ledger.append(
                piece, self._last_write, owner=speaker, owner_total=speaker.samples_written
            )
        self.uploader.notify()

    async def _wait_room(self) -> None:
        deadline = time.monotonic() + self.tuning.buffer_wait_seconds
        while self.uploader.ledger.buffered_samples >= self._capacity:
            if self.state is not State.ACTIVE:
                raise SessionClosed(f"session {self.id} is closing")
            left = deadline - time.monotonic()
            if left <= 0:
                raise BufferFull(
                    f"{self.uploader.ledger.buffered_seconds:.1f} s of audio not yet in KVS"
                )
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), min(left, 1.0))
            except TimeoutError:
                pass

    def _append(self, pieces: list[FragmentPiece]) -> None:
        now = time.monotonic()
        for piece in pieces:
            self.uploader.ledger.append(piece, now)
        if pieces:
            self.uploader.notify()

    def _close_fragment(self) -> None:
        self._append(self._writer.close())

    def _on_resolved(self, fragments: list[Fragment]) -> None:
        latest: dict[Speaker, int] = {}
        for frag in fragments:
            for owner, total in frag.owners.items():
                assert isinstance(owner, Speaker)
                latest[owner] = max(total, latest.get(owner, 0))
        for speaker, total in latest.items():
            speaker._persisted(total)
        if self.uploader.ledger.buffered_samples < self._capacity:
            self._room.set()

    def _on_retimed(self, delta_ms: int) -> None:
        """The uploader moved the unsent fragments later (a timeline conflict in KVS): the open
        fragment moves with them, and drift is measured afresh."""
        self._writer.shift(delta_ms)
        self.timeline.rebase()
        self._log.warning("session_retimed", moved_ms=delta_ms, end_ms=self._writer.end_ms)

    async def _tick(self) -> None:
        """Closes the open fragment when audio stops; lets the connection go when alone."""
        while self.state is State.ACTIVE:
            await asyncio.sleep(_TICK)
            now = time.monotonic()
            if self._writer.is_open and now - self._last_write >= self.tuning.idle_fragment_seconds:
                self._close_fragment()
            if self._alone_since is not None and now - self._alone_since >= self._grace:
                self.uploader.set_idle(True)

    async def close(self, timeout: float) -> bool:  # noqa: ASYNC109 (deadline passed in)
        """Take no more audio, flush until PERSISTED or the deadline, stop. True when flushed."""
        if self.state is State.CLOSED:
            return True
        self.state = State.CLOSING
        self._room.set()
        self._close_fragment()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        flushed = await self.uploader.close(timeout)
        if not flushed:
            self._log.warning(
                "session_not_flushed",
                fragments=self.uploader.ledger.unresolved,
                seconds=round(self.uploader.ledger.buffered_seconds, 3),
                bytes=sum(len(f.data) for f in self.uploader.ledger if not f.resolved),
            )
        self.state = State.CLOSED
        return flushed
