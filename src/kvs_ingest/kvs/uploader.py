"""`StreamUploader`: a stream's ledger written to KVS over one PutMedia connection at a time.

It connects only when the ledger holds something unresolved, re-sends after a failure as the
producer SDK does (fresh endpoint, fresh credentials, back-off), rotates the connection at a
fragment boundary before `rotate_seconds` and before the credentials expire, and ends the
connection cleanly when asked to go idle (no speaker for the grace period) or to close.

Connection lifecycle (changed only by `_run`):

    WAITING --unresolved fragments--> CONNECTING --200--> STREAMING
    STREAMING --rotation due / idle / close--> DRAINING (nothing new; waits for PERSISTED) --> WAITING
    STREAMING --drop, retryable ERROR, 4003, stale--> BACKOFF --> CONNECTING
    STREAMING --4004 on a first send--> RETIMING (learn KVS's end, move the rest later) --> CONNECTING
    CONNECTING --HTTP refusal--> BACKOFF (endpoint re-fetched)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from enum import StrEnum

import aiohttp

from kvs_ingest.kvs import metrics as m
from kvs_ingest.kvs.acks import AckEvent, AckEventType
from kvs_ingest.kvs.control import FrozenCredentials, KvsControl
from kvs_ingest.kvs.errors import KvsError, PutMediaDropped, PutMediaRefused
from kvs_ingest.kvs.fragments import connection_header
from kvs_ingest.kvs.ledger import (
    AckAction,
    Fragment,
    FragmentLedger,
    Rollback,
    SendCursor,
    Status,
)
from kvs_ingest.kvs.putmedia import PutMediaConnection
from kvs_ingest.kvs.tuning import DEFAULT_TUNING, Tuning
from kvs_ingest.logging import get_logger

log = get_logger(__name__)

_TICK = 0.1
_COALESCE_BYTES = 1 << 18  # at most this much is joined into one body write


class State(StrEnum):
    WAITING = "waiting"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    DRAINING = "draining"
    BACKOFF = "backoff"
    RETIMING = "retiming"
    CLOSED = "closed"


class _End(StrEnum):
    """Why a connection ended; decides the rollback and whether to back off."""

    CLEAN = "clean"  # we ended the body (rotation, idle, close) after everything resolved
    SERVER_CLOSED = "server_closed"  # the response ended with nothing outstanding
    DROPPED = "dropped"
    RETRY = "error_ack"  # a retryable ERROR ack
    RECONNECT = "max_duration"  # 4003
    RETIME = "timeline_conflict"  # 4004 on a first send: move the rest past KVS's end
    STALE = "stale"
    REFUSED = "refused"
    THROTTLED = "throttled"  # refused for rate or a concurrent connection: same endpoint


# PutMedia refusals that say "not now", not "not here": keep the endpoint.
_THROTTLING = frozenset({"ClientLimitExceededException", "ConnectionLimitExceededException"})

_ROLLBACK = {
    _End.CLEAN: Rollback.AFTER_RECEIVED,
    _End.SERVER_CLOSED: Rollback.AFTER_RECEIVED,
    _End.DROPPED: Rollback.AFTER_RECEIVED,
    _End.RECONNECT: Rollback.AFTER_RECEIVED,
    _End.REFUSED: Rollback.AFTER_RECEIVED,
    _End.THROTTLED: Rollback.AFTER_RECEIVED,
    _End.RETRY: Rollback.AFTER_PERSISTED,
    _End.STALE: Rollback.AFTER_PERSISTED,
    _End.RETIME: Rollback.AFTER_PERSISTED,
}

_VERDICT = {AckAction.RETRY: _End.RETRY, AckAction.RECONNECT: _End.RECONNECT}


class StreamUploader:
    """Append with `add(piece)` (through the ledger), then `notify()`; `close()` flushes."""

    def __init__(
        self,
        kvs: KvsControl,
        http: aiohttp.ClientSession,
        *,
        stream_name: str,
        rotate_seconds: float,
        on_resolved: Callable[[list[Fragment]], None] | None = None,
        tuning: Tuning = DEFAULT_TUNING,
        segment_uid: bytes | None = None,
        lookback_seconds: float = 15 * 60.0,
    ) -> None:
        self.kvs = kvs
        self._http = http
        self.stream_name = stream_name
        self.ledger = FragmentLedger()
        self._rotate_seconds = rotate_seconds
        # Told of fragments leaving the ledger resolved, in order (the session sets it).
        self.on_resolved = on_resolved
        # Told (synchronously, right after the ledger moved) that the fragments from a timeline
        # conflict on moved `delta_ms` later: the session moves its writer's open fragment too.
        self.on_retimed: Callable[[int], None] | None = None
        self._lookback = lookback_seconds
        self._conflict: Fragment | None = None  # the fragment a first-send 4004 refused
        self._retimes = 0  # consecutive re-timings without a PERSISTED in between
        self.retimed_ms = 0  # total forward moves
        self.tuning = tuning
        self._header = connection_header(segment_uid or os.urandom(16))
        self._wake = asyncio.Event()  # new bytes in the ledger, or a flag changed
        self._resolved_event = asyncio.Event()  # something got resolved
        self._idle = False  # no speaker for the grace period: end the connection when done
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._conn_id = 0
        self.state = State.WAITING
        self.connections = 0  # PutMedia requests that got a 200
        self.last_error: str | None = None
        self._log = log.bind(stream=stream_name)
        self._buffered_reported = 0  # samples this ledger added to the gauge

    # --- producer side -------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"uploader:{self.stream_name}"
            )

    def notify(self) -> None:
        """New bytes are in the ledger: wake the body and leave the idle state."""
        self._idle = False
        self._wake.set()
        self._report_buffered()

    def set_idle(self, idle: bool) -> None:
        """Idle: end the connection cleanly once everything is PERSISTED (reopen on new data)."""
        self._idle = idle
        self._wake.set()

    async def wait_resolved(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until nothing in the ledger is unresolved, or the deadline."""
        deadline = time.monotonic() + timeout
        while self.ledger.unresolved:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._resolved_event.clear()
            try:
                await asyncio.wait_for(self._resolved_event.wait(), left)
            except TimeoutError:
                return not self.ledger.unresolved
        return True

    async def close(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Flush until PERSISTED or the deadline, end the connection, stop. True when flushed."""
        self.start()
        flushed = await self.wait_resolved(timeout)
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), 2.0)
            except (TimeoutError, Exception):
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.state = State.CLOSED
        m.add_buffered_samples(-self._buffered_reported)
        self._buffered_reported = 0
        return flushed

    def _report_buffered(self) -> None:
        now = self.ledger.buffered_samples
        m.add_buffered_samples(now - self._buffered_reported)
        self._buffered_reported = now

    # --- the connection loop -------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        rollback = Rollback.AFTER_PERSISTED
        while True:
            self.state = State.WAITING
            while not self.ledger.unresolved:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            self.state = State.CONNECTING
            endpoint: str | None = None
            try:
                endpoint = await self.kvs.data_endpoint(self.stream_name)
                credentials = await self.kvs.credentials()
            except KvsError as exc:
                end = _End.REFUSED
                self.last_error = str(exc)
                self._log.warning("putmedia_endpoint_failed", error=str(exc))
            else:
                end = await self._connection(endpoint, credentials, rollback)
            m.PUTMEDIA_RECONNECTS.labels(end.value).inc()
            rollback = _ROLLBACK[end]
            if end in (_End.CLEAN, _End.SERVER_CLOSED):
                failures = 0
                continue
            if self._conflict is not None:
                # A first send refused as out of order, whatever else ended the connection.
                await self._retime()
                continue
            if end not in (_End.RECONNECT, _End.THROTTLED) and endpoint is not None:
                self.kvs.invalidate_endpoint(self.stream_name, endpoint)
            if self._closing and not self.ledger.unresolved:
                return
            self.state = State.BACKOFF
            delay = 0.0 if end is _End.RECONNECT else self.tuning.backoff(failures)
            failures = min(failures + 1, 30)
            if delay:
                await asyncio.sleep(delay)

    async def _connection(
        self, endpoint: str, credentials: FrozenCredentials, rollback: Rollback
    ) -> _End:
        self._conn_id += 1
        conn_id = self._conn_id
        start = self.ledger.rollback(rollback)
        cursor = SendCursor(self.ledger, conn_id, self._header, start)
        opened = time.monotonic()
        deadline = opened + self._rotate_seconds
        if credentials.expires_at is not None:
            left = credentials.expires_at - time.time() - self.tuning.credential_margin_seconds
            deadline = min(deadline, opened + max(left, 1.0))
        conn = PutMediaConnection(
            self._http,
            endpoint=endpoint,
            stream_name=self.stream_name,
            credentials=credentials,
            region=self.kvs.region,
            start_timestamp=time.time(),
        )
        verdict: list[_End] = []
        progress = [opened]
        stopping = [False]

        def on_ack(event: AckEvent) -> None:
            m.ACKS_BY_TYPE[event.type].inc()
            if event.type is AckEventType.IDLE:
                return
            outcome = self.ledger.on_ack(event, conn_id)
            frag = outcome.fragment
            if frag is not None:
                progress[0] = time.monotonic()
            if event.type is AckEventType.ERROR:
                m.FRAGMENTS_ERRORED.labels(str(event.error_id)).inc()
                self._log_error_ack(event, frag)
            if outcome.action is AckAction.RETIME and frag is not None:
                if self._conflict is None or frag.seq < self._conflict.seq:
                    self._conflict = frag
                if not verdict:
                    verdict.append(_End.RETIME)
                    conn.abort()
            elif outcome.action is not AckAction.NONE and not verdict:
                # Drop the connection now: nothing more may be persisted after the refused
                # fragment on it, or its re-send would be refused as out of order (4004).
                verdict.append(_VERDICT[outcome.action])
                conn.abort()
            self._wake.set()
            if outcome.newly_resolved:
                self._resolved(outcome.newly_resolved)

        async def body() -> AsyncIterator[bytes]:
            while True:
                if conn.aborted:
                    raise ConnectionAbortedError("PutMedia connection aborted")
                if conn.ended:
                    return  # KVS ended the response: nothing more can be read from this body
                if not stopping[0] and time.monotonic() >= deadline:
                    # Rotation: finish the fragment in progress, then end this connection,
                    # even when a backlog means the body never catches up.
                    stopping[0] = True
                    self.state = State.DRAINING
                    cursor.stop_at_boundary()
                now = time.monotonic()
                owed = self.ledger.awaiting_acks(conn_id)
                chunk = cursor.next_bytes(now)
                if chunk is not None:
                    # Everything sendable now goes in one HTTP chunk (one syscall): typically a
                    # fragment's last blocks and the END_OF_FRAGMENT tag that completes it.
                    while len(chunk) < _COALESCE_BYTES:
                        more = cursor.next_bytes(now)
                        if more is None:
                            break
                        chunk += more
                if cursor.written:
                    self._written(cursor.written)
                if chunk is not None:
                    if not owed:
                        progress[0] = now  # nothing was owed: staleness counts from here
                    yield chunk
                    continue
                if cursor.drained:
                    # Like the SDK: end the body only once the last fragment is PERSISTED.
                    limit = time.monotonic() + self.tuning.rotate_drain_seconds
                    while (
                        self.ledger.awaiting_acks(conn_id)
                        and not conn.ended
                        and time.monotonic() < limit
                    ):
                        self._resolved_event.clear()
                        try:
                            await asyncio.wait_for(self._resolved_event.wait(), _TICK * 5)
                        except TimeoutError:
                            pass
                    return
                if not stopping[0] and self._should_stop(deadline):
                    stopping[0] = True
                    self.state = State.DRAINING
                    cursor.stop_at_boundary()
                    continue
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), _TICK * 5)
                except TimeoutError:
                    pass

        runner = asyncio.create_task(
            conn.run(body(), on_ack, on_end=self._wake.set), name=f"putmedia:{conn_id}"
        )
        try:
            return await self._watch(runner, conn, cursor, conn_id, progress, verdict)
        finally:
            try:
                if not runner.done():
                    conn.abort()
                    self._wake.set()
                    try:
                        await asyncio.wait_for(asyncio.shield(runner), 5.0)
                    except asyncio.CancelledError:
                        runner.cancel()
                        await asyncio.gather(runner, return_exceptions=True)
                        raise
                    except Exception:
                        runner.cancel()
                        await asyncio.gather(runner, return_exceptions=True)
            finally:
                if not conn.responded:
                    # Refused (another task still holds the stream, say) or failed before KVS
                    # answered: these sends were never read, so a later 4004 is no duplicate.
                    self.ledger.connection_unheard(conn_id)

    async def _watch(
        self,
        runner: asyncio.Task[None],
        conn: PutMediaConnection,
        cursor: SendCursor,
        conn_id: int,
        progress: list[float],
        verdict: list[_End],
    ) -> _End:
        """Wait for the connection to end; cut it when stale. Returns why it ended.

        It wakes when the connection ends or when it could first be stale (`ack_timeout` after
        the last sign of progress), not on a fixed tick: thousands of sessions share the loop.
        """
        counted = False
        while True:
            if not counted:
                timeout = _TICK * 2  # until KVS answers the request (milliseconds, usually)
            elif self.ledger.awaiting_acks(conn_id):
                timeout = max(_TICK * 2, progress[0] + self.tuning.ack_timeout - time.monotonic())
            else:
                timeout = self.tuning.ack_timeout  # a send resets progress (see body)
            await asyncio.wait({runner}, timeout=timeout)
            if not counted and conn.responded:
                counted = True
                self.connections += 1
                self.state = State.STREAMING
                m.PUTMEDIA_CONNECTS.labels("ok").inc()
                m.PUTMEDIA_OPEN.inc()
            try:
                if runner.done():
                    return self._ended(runner, cursor, verdict)
            finally:
                if runner.done() and counted:
                    m.PUTMEDIA_OPEN.dec()
            now = time.monotonic()
            if (
                not verdict
                and self.ledger.awaiting_acks(conn_id)
                and now - progress[0] > self.tuning.ack_timeout
            ):
                self._log.warning("putmedia_stale", seconds=round(now - progress[0], 1))
                verdict.append(_End.STALE)
                conn.abort()
                self._wake.set()  # the body sees `aborted` now, not at its next timeout

    def _ended(self, runner: asyncio.Task[None], cursor: SendCursor, verdict: list[_End]) -> _End:
        if verdict:
            if not runner.cancelled():
                runner.exception()  # the abort we caused: retrieved, not logged by asyncio
            self._log.info("putmedia_reconnect", reason=verdict[0].value)
            return verdict[0]
        if runner.cancelled():
            return _End.DROPPED
        exc = runner.exception()
        if isinstance(exc, PutMediaRefused):
            m.PUTMEDIA_CONNECTS.labels(exc.error_type or str(exc.status)).inc()
            self.last_error = str(exc)
            self._log.warning("putmedia_refused", status=exc.status, error=exc.error_type)
            if exc.error_type in _THROTTLING:
                return _End.THROTTLED
            return _End.REFUSED
        if isinstance(exc, PutMediaDropped):
            self.last_error = str(exc)
            self._log.info("putmedia_dropped", error=str(exc))
            return _End.DROPPED
        if exc is not None:
            self.last_error = repr(exc)
            self._log.error("putmedia_failed", error=repr(exc))
            return _End.DROPPED
        if self.ledger.unresolved and not cursor.drained:
            self._log.info("putmedia_closed_by_server", unresolved=self.ledger.unresolved)
            return _End.DROPPED
        return _End.CLEAN if cursor.drained else _End.SERVER_CLOSED

    def _should_stop(self, deadline: float) -> bool:
        if time.monotonic() >= deadline:
            return True
        if (self._idle or self._closing) and not self.ledger.unresolved:
            return True
        return False

    def _written(self, frags: list[Fragment]) -> None:
        for frag in frags:
            (m.FRAGMENTS_FIRST_SENT if frag.attempts <= 1 else m.FRAGMENTS_RESENT).inc()
        frags.clear()

    async def _retime(self) -> None:
        """A first send was refused with 4004: KVS holds audio at or after its timecode (another
        process ran ahead of the wall clock). Learn where KVS's audio ends (ListFragments), or
        step forward by a growing bound when that fails, and move the refused fragment and all
        after it there. Nothing was stored, nothing is counted as stored."""
        frag, self._conflict = self._conflict, None
        if frag is None or frag.resolved or self.ledger.get(frag.seq) is not frag:
            return
        self.state = State.RETIMING
        step = self.tuning.retime_step_ms * 2 ** min(self._retimes, 6)
        self._retimes += 1
        end: int | None = None
        try:
            end = await self.kvs.stored_end_ms(self.stream_name, lookback_seconds=self._lookback)
        except Exception as exc:  # best effort: the bounded step below still moves on
            self._log.warning("kvs_stored_end_unknown", error=str(exc))
        if frag.resolved or self.ledger.get(frag.seq) is not frag:
            return
        delta = end - frag.timecode if end is not None and end > frag.timecode else step
        moved = self.ledger.shift(frag.seq, delta)
        if self.on_retimed is not None:
            self.on_retimed(delta)
        self.retimed_ms += delta
        m.FRAGMENTS_RETIMED.inc(len(moved))
        self._log.warning(
            "putmedia_timeline_conflict",
            fragment_seq=frag.seq,
            moved_ms=delta,
            fragments=len(moved),
            stored_end_known=end is not None,
        )

    def _resolved(self, frags: tuple[Fragment, ...]) -> None:
        now = time.monotonic()
        for frag in frags:
            if frag.status is Status.PERSISTED:
                self._retimes = 0
                m.FRAGMENTS_PERSISTED.inc()
                if frag.sent_at is not None:
                    m.PERSIST_LATENCY.observe(max(0.0, now - frag.sent_at))
            elif frag.status is Status.DUPLICATE:
                m.FRAGMENTS_DUPLICATE.inc()
            elif frag.status is Status.FAILED:
                m.FRAGMENTS_FAILED.inc()
        popped = self.ledger.pop_resolved()
        self._report_buffered()
        self._resolved_event.set()
        self._wake.set()
        if popped and self.on_resolved is not None:
            self.on_resolved(popped)

    def _log_error_ack(self, event: AckEvent, frag: Fragment | None) -> None:
        self._log.warning(
            "putmedia_error_ack",
            error_id=event.error_id,
            timecode=event.timecode,
            fragment_seq=frag.seq if frag else None,
            attempts=frag.attempts if frag else None,
            outcome=frag.status.value if frag else "unknown fragment",
        )
