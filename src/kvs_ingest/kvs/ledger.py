"""The fragment ledger of one stream: every fragment kept until KVS says PERSISTED (sans-I/O).

`FragmentLedger` holds the fragments in timecode order with their ack state; `SendCursor` is one
PutMedia connection's view of it: where the body is, what to send next. Time is passed in, never
read. The owner of both is `kvs_ingest.kvs.uploader.StreamUploader`.

Fragment states (who changes them: `SendCursor` when sending, `on_ack` for acks):

    PENDING   --ack BUFFERING-->  BUFFERING --RECEIVED--> RECEIVED --PERSISTED--> PERSISTED
    any unresolved --ERROR 4004 on a re-send--> DUPLICATE     (KVS already has it)
    any unresolved --ERROR 4004 on its first send--> PENDING, `shift` moves it and all after
                                                     it later (a timeline conflict: never stored)
    any unresolved --ERROR non-retryable-->     FAILED        (logged, counted, skipped)
    any unresolved --ERROR 4000/5000/5001/4003, or a new connection rolls back--> PENDING

PERSISTED, DUPLICATE and FAILED are resolved; resolved fragments leave from the front. A
PERSISTED ack also resolves every earlier fragment sent and not refused: KVS stores a stream's
fragments in order, and the producer SDK trims its buffer the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from kvs_ingest.kvs.acks import AckEvent, AckEventType
from kvs_ingest.kvs.fragments import END_OF_FRAGMENT, FragmentPiece, retime
from kvs_ingest.kvs.limits import (
    DUPLICATE_ERROR_ID,
    RECONNECT_ERROR_IDS,
    RETRYABLE_ERROR_IDS,
    SAMPLE_RATE,
)


class Status(StrEnum):
    PENDING = "pending"
    BUFFERING = "buffering"
    RECEIVED = "received"
    PERSISTED = "persisted"
    DUPLICATE = "duplicate"
    FAILED = "failed"


RESOLVED = frozenset({Status.PERSISTED, Status.DUPLICATE, Status.FAILED})


class Rollback(Enum):
    """Where a new connection starts re-sending (as the producer SDK does)."""

    AFTER_RECEIVED = "received"  # the connection broke; the host kept what it RECEIVED
    AFTER_PERSISTED = "persisted"  # the host may have died: only PERSISTED is safe


class AckAction(Enum):
    NONE = "none"
    RECONNECT = "reconnect"  # 4003: new connection, carry on after the last RECEIVED
    RETRY = "retry"  # retryable ERROR: end this connection, re-send after the last PERSISTED
    # 4004 on a fragment's first send: KVS holds audio at or after its timecode. End this
    # connection, move the fragment and all after it past KVS's end (`shift`), send again.
    RETIME = "retime"


@dataclass(eq=False, slots=True)
class Fragment:
    seq: int
    timecode: int
    data: bytearray
    samples: int
    duration_ms: int
    closed: bool
    created_at: float
    # owner -> that owner's cumulative sample count at this fragment's end (durability feedback)
    owners: dict[object, int] = field(default_factory=dict)
    status: Status = Status.PENDING
    attempts: int = 0  # connections it was started on
    started_conn: int = 0  # the last connection it was started on
    unheard: int = 0  # of `attempts`, on connections KVS refused before reading (no response)
    sent_conn: int = 0  # last connection it was fully written on (0: none)
    sent_at: float | None = None
    refused: bool = False  # got a retryable ERROR: not covered by a later PERSISTED
    error_id: int | None = None

    @property
    def resolved(self) -> bool:
        return self.status in RESOLVED

    @property
    def offers(self) -> int:
        """Sends KVS may have read: starts on connections that got a response."""
        return self.attempts - self.unheard


@dataclass(frozen=True, slots=True)
class AckOutcome:
    action: AckAction
    fragment: Fragment | None  # the fragment the ack named, if still held
    newly_resolved: tuple[Fragment, ...] = ()


class FragmentLedger:
    """Fragments of one stream in order; bounded by the caller through `buffered_samples`."""

    def __init__(self) -> None:
        self._items: deque[Fragment] = deque()
        self._by_tc: dict[int, Fragment] = {}
        self._next_seq = 1
        self.buffered_samples = 0  # samples in unresolved fragments

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Fragment]:
        return iter(self._items)

    @property
    def first_seq(self) -> int:
        return self._items[0].seq if self._items else self._next_seq

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def last(self) -> Fragment | None:
        return self._items[-1] if self._items else None

    def get(self, seq: int) -> Fragment | None:
        index = seq - self.first_seq
        if 0 <= index < len(self._items):
            return self._items[index]
        return None

    @property
    def unresolved(self) -> int:
        return sum(1 for f in self._items if not f.resolved)

    def append(
        self, piece: FragmentPiece, now: float, owner: object = None, owner_total: int = 0
    ) -> Fragment:
        """Add a writer's piece: a new fragment when `piece.opened`, else more of the last one."""
        if piece.opened:
            last = self.last
            if last is not None and (not last.closed or piece.timecode <= last.timecode):
                raise ValueError("a fragment opens only after the last one closed, later in time")
            frag = Fragment(self._next_seq, piece.timecode, bytearray(piece.data), 0, 0, False, now)
            self._next_seq += 1
            self._items.append(frag)
            self._by_tc[frag.timecode] = frag
        else:
            frag = self._require_open(piece.timecode)
            frag.data += piece.data
        frag.samples += piece.samples
        frag.duration_ms = piece.duration_ms
        frag.closed = piece.closed
        self.buffered_samples += piece.samples
        if owner is not None and piece.samples:
            frag.owners[owner] = owner_total
        return frag

    def _require_open(self, timecode: int) -> Fragment:
        last = self.last
        if last is None or last.closed or last.timecode != timecode:
            raise ValueError("piece for a fragment that is not the open one")
        return last

    def pop_resolved(self) -> list[Fragment]:
        """Remove and return the resolved fragments at the front (in order)."""
        out = []
        while self._items and self._items[0].resolved:
            frag = self._items.popleft()
            del self._by_tc[frag.timecode]
            out.append(frag)
        return out

    def rollback(self, policy: Rollback) -> int:
        """Mark what a new connection must send again; returns the first seq to send."""
        start = self._next_seq
        for frag in self._items:
            if frag.resolved:
                continue
            if (
                policy is Rollback.AFTER_RECEIVED
                and frag.status is Status.RECEIVED
                and not frag.refused
            ):
                continue
            start = frag.seq
            break
        for frag in self._items:
            if frag.seq >= start and not frag.resolved:
                frag.status = Status.PENDING
        return start

    def on_ack(self, event: AckEvent, conn: int) -> AckOutcome:
        """Apply one ack from connection `conn`; says what the connection must do next."""
        if event.timecode is None:
            return AckOutcome(AckAction.NONE, None)
        frag = self._by_tc.get(event.timecode)
        if frag is None or frag.resolved:
            return AckOutcome(AckAction.NONE, frag)
        kind = event.type
        if kind is AckEventType.BUFFERING:
            if frag.status is Status.PENDING:
                frag.status = Status.BUFFERING
            return AckOutcome(AckAction.NONE, frag)
        if kind is AckEventType.RECEIVED:
            frag.status = Status.RECEIVED
            return AckOutcome(AckAction.NONE, frag)
        if kind is AckEventType.PERSISTED:
            done = []
            for earlier in self._items:
                if earlier.seq > frag.seq:
                    break
                if earlier.resolved or earlier.refused or earlier.attempts == 0:
                    continue
                if earlier is frag or earlier.closed:
                    self._resolve(earlier, Status.PERSISTED)
                    done.append(earlier)
            return AckOutcome(AckAction.NONE, frag, tuple(done))
        if kind is AckEventType.ERROR:
            error_id = event.error_id
            frag.error_id = error_id
            if error_id == DUPLICATE_ERROR_ID:
                if frag.offers > 1:
                    self._resolve(frag, Status.DUPLICATE)
                    return AckOutcome(AckAction.NONE, frag, (frag,))
                # Never offered to KVS before (sends on connections refused before a response
                # do not count), so it cannot be a duplicate: it overlaps what KVS holds.
                # Not stored; a later PERSISTED must not cover it.
                frag.status = Status.PENDING
                frag.refused = True
                return AckOutcome(AckAction.RETIME, frag)
            if error_id in RECONNECT_ERROR_IDS:
                frag.status = Status.PENDING
                return AckOutcome(AckAction.RECONNECT, frag)
            if error_id in RETRYABLE_ERROR_IDS:
                frag.status = Status.PENDING
                frag.refused = True
                return AckOutcome(AckAction.RETRY, frag)
            self._resolve(frag, Status.FAILED)
            return AckOutcome(AckAction.NONE, frag, (frag,))
        return AckOutcome(AckAction.NONE, frag)

    def shift(self, from_seq: int, delta_ms: int) -> list[Fragment]:
        """Move fragment `from_seq` and every one after it `delta_ms` later (rewriting their
        Cluster Timecodes) and make them first sends again. The caller moves the writer's open
        fragment by the same amount in the same step. Returns the fragments moved."""
        if delta_ms <= 0:
            raise ValueError("a shift moves forward")
        moved = [f for f in self._items if f.seq >= from_seq]
        for frag in moved:
            del self._by_tc[frag.timecode]
        for frag in moved:
            frag.data = retime(frag.data, frag.timecode, frag.timecode + delta_ms)
            frag.timecode += delta_ms
            self._by_tc[frag.timecode] = frag
            if not frag.resolved:
                frag.status = Status.PENDING
                frag.attempts = 0
                frag.unheard = 0
                frag.started_conn = 0
                frag.sent_conn = 0
                frag.sent_at = None
                frag.refused = False
                frag.error_id = None
        return moved

    def connection_unheard(self, conn: int) -> None:
        """Connection `conn` ended without a response (refused, or failed before KVS answered):
        what it started was never read by KVS, so it does not make a later 4004 a duplicate.
        Call it once the connection is over, before the next one starts."""
        for frag in self._items:
            if frag.started_conn == conn:
                frag.unheard += 1
                frag.started_conn = 0

    def _resolve(self, frag: Fragment, status: Status) -> None:
        frag.status = status
        self.buffered_samples -= frag.samples

    def may_start(self, seq: int) -> bool:
        """Whether a body may start fragment `seq` (which completes fragment `seq - 1`).

        Only when every fragment before `seq - 1` is RECEIVED or resolved: at most one complete
        fragment is ever unconfirmed. So when KVS refuses a fragment (ERROR 5000), no later one
        can have been completed and stored behind it, and its re-send is not refused as out of
        order (4004). Streaming in real time never waits here; a backlog goes at the ack rate.
        """
        for frag in self._items:
            if frag.seq >= seq - 1:
                break
            if not (frag.resolved or frag.status is Status.RECEIVED):
                return False
        return True

    def awaiting_acks(self, conn: int) -> bool:
        """Something sent is waiting for PERSISTED: fully written on `conn`, or RECEIVED before."""
        return any(
            not f.resolved and (f.sent_conn == conn or f.status is Status.RECEIVED)
            for f in self._items
        )

    @property
    def buffered_seconds(self) -> float:
        return self.buffered_samples / SAMPLE_RATE


class SendCursor:
    """One PutMedia connection's position in the ledger: `next_bytes()` until it returns None.

    The body is the connection header, then each fragment from `start` on, sent whole once it
    is closed (one write per fragment rather than one per speaker message: KVS acks nothing of
    a fragment before it is complete, so streaming it earlier gains no ack), then an
    END_OF_FRAGMENT tag whenever the body has caught up with a closed fragment (so KVS completes
    it without waiting for the next one). After `stop_at_boundary()` the cursor sends nothing
    that starts a new fragment; `drained` says the body can end.
    """

    def __init__(self, ledger: FragmentLedger, conn: int, header: bytes, start: int) -> None:
        self._ledger = ledger
        self.conn = conn
        self._header: bytes | None = header
        self._seq = start
        self._offset = 0
        self._eofr_after = 0  # seq of the fragment last closed by an END_OF_FRAGMENT tag
        self._last_sent = 0  # seq of the last fragment fully written
        self._stopping = False
        self.drained = False
        self.written: list[Fragment] = []  # fully written fragments; the owner empties it

    @property
    def at_boundary(self) -> bool:
        return self._offset == 0

    def stop_at_boundary(self) -> None:
        self._stopping = True

    def next_bytes(self, now: float, limit: int = 1 << 18) -> bytes | None:
        """The next bytes for the body, or None when there is nothing to send now."""
        if self._header is not None:
            header, self._header = self._header, None
            return header
        ledger = self._ledger
        while True:
            self._seq = max(self._seq, ledger.first_seq)
            frag = ledger.get(self._seq)
            if frag is None or (self._stopping and self._offset == 0):
                eofr = self._end_of_fragment()
                if eofr is not None:
                    return eofr
                if self._stopping and self._offset == 0 and self._eofr_after == self._last_sent:
                    self.drained = True
                return None
            if frag.resolved and self._offset == 0:
                self._seq += 1
                continue
            if self._offset == 0 and not ledger.may_start(frag.seq):
                # Waiting for an ack of the fragment last written: KVS must see it complete.
                return self._end_of_fragment()
            if self._offset == 0 and not frag.closed:
                # A fragment goes out whole once complete: one write instead of one per
                # speaker message, and KVS acks nothing earlier anyway.
                return self._end_of_fragment()
            if self._offset < len(frag.data):
                if self._offset == 0:
                    frag.attempts += 1
                    frag.started_conn = self.conn
                    frag.refused = False
                chunk = bytes(frag.data[self._offset : self._offset + limit])
                self._offset += len(chunk)
                return chunk
            if not frag.closed:
                return None
            frag.sent_conn = self.conn
            frag.sent_at = now
            self._last_sent = frag.seq
            self._seq += 1
            self._offset = 0
            self.written.append(frag)

    def _end_of_fragment(self) -> bytes | None:
        """END_OF_FRAGMENT after the fragment last written, once, when the window allows."""
        last = self._last_sent
        if not last or self._eofr_after == last or not self._ledger.may_start(last + 1):
            return None
        if self._offset != 0:
            return None
        self._eofr_after = last
        return END_OF_FRAGMENT
