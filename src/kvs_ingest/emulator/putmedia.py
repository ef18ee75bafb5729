"""One PutMedia request: read the chunked MKV body incrementally, answer with ack events.

The asyncio adapter around `PutMediaParser`. The 200 response is prepared at once and acks are
written while the body is still arriving (KVS-PROTOCOL.md: full duplex). One writer task owns the
response so that acks keep their order when a fault delays them; the read loop only enqueues.

Ack order per fragment follows the recording of AWS's C producer against KVS: BUFFERING when the
Cluster's Timecode arrives, then RECEIVED and PERSISTED (after fsync) when the fragment ends, or
ERROR with an error id. After an ERROR the response ends (the BUFFERING of a fragment already
started in the same read is still sent); `error_ack` faults may keep it open instead.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from kvs_ingest.emulator import limits
from kvs_ingest.emulator.ingest import (
    FragmentComplete,
    FragmentStarted,
    IngestEvent,
    IngestFailed,
    PutMediaParser,
)
from kvs_ingest.emulator.storage import StreamRecord
from kvs_ingest.logging import get_logger

if TYPE_CHECKING:
    from kvs_ingest.emulator.app import Emulator

log = get_logger(__name__)

_END = object()
_DROP = object()


@dataclass(slots=True)
class _Current:
    timecode: int
    number: str
    server_ms: int


class PutMediaConnection:
    """Serves one PutMedia request; `run()` returns the (already sent) response."""

    def __init__(
        self,
        emulator: Emulator,
        request: web.Request,
        rec: StreamRecord,
        *,
        relative: bool,
        start_ms: int,
        request_id: str,
    ) -> None:
        self._emu = emulator
        self._request = request
        self._rec = rec
        self._stream = rec.name
        self._relative = relative
        self._start_ms = start_ms
        self._request_id = request_id
        config = emulator.config
        self._parser = PutMediaParser(
            max_fragment_ms=config.max_fragment_ms, max_fragment_bytes=config.max_fragment_bytes
        )
        self._queue: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()
        self._current: _Current | None = None
        self._last_ms: int | None = None  # latest frame stored by this connection
        self._last_timecode = 0  # the last fragment's timecode, for ERROR acks outside one
        self._stop = False
        self._closing = False  # an ERROR was sent: stop after the next BUFFERING
        self._drop_after = emulator.faults.claim_drop(rec.name)
        self._persisted = 0
        self._bytes = 0
        self._last_due = 0.0
        self.dropped = False
        self._log = log.bind(stream=rec.name, request_id=request_id)

    def close(self) -> None:
        """Emulator shutdown: end this connection at once."""
        self._stop = True
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    async def run(self) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "application/json", "x-amzn-RequestId": self._request_id},
        )
        response.enable_chunked_encoding()
        response.force_close()  # one long request per connection, closed when it ends
        await response.prepare(self._request)
        writer = asyncio.create_task(self._write_acks(response))
        self._log.info("putmedia_open", relative=self._relative)
        if self._drop_after == 0:  # drop_after 0: cut the connection before any fragment
            self._queue.put_nowait((self._due(), _DROP))
            self._stop = True
        started = last_data = last_idle_ack = loop.time()
        config = self._emu.config
        try:
            while not self._stop:
                now = loop.time()
                limit = self._emu.faults.max_connection_seconds(self._stream)
                max_seconds = min(config.max_connection_seconds, limit or float("inf"))
                if now - started >= max_seconds:
                    self._error(limits.ERR_CONNECTION_DURATION, discard_current=True)
                    break
                wait = min(
                    config.idle_ack_seconds - (now - last_idle_ack),
                    config.idle_timeout_seconds - (now - last_data),
                    started + max_seconds - now,
                )
                try:
                    chunk = await asyncio.wait_for(
                        self._request.content.readany(), timeout=max(wait, 0.001)
                    )
                except TimeoutError:
                    now = loop.time()
                    if now - last_data >= config.idle_timeout_seconds:
                        self._log.info("putmedia_idle_timeout")
                        break
                    if now - last_idle_ack >= config.idle_ack_seconds:
                        last_idle_ack = now
                        self._ack({"EventType": "IDLE"})
                    continue
                except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
                    self._log.info("putmedia_body_lost", error=type(exc).__name__)
                    break
                except Exception as exc:  # aiohttp payload errors: the client went away
                    self._log.info("putmedia_body_lost", error=type(exc).__name__)
                    break
                last_data = last_idle_ack = loop.time()
                self._bytes += len(chunk)
                if chunk:
                    events = self._parser.feed(chunk)
                else:
                    events = self._parser.close()
                    self._stop = True
                await self._handle(events)
        finally:
            self._emu.release_put(self)
            self._queue.put_nowait((0.0, _END))
            try:
                await writer
            except asyncio.CancelledError:
                writer.cancel()
                raise
        if not self.dropped:
            try:
                await response.write_eof()
            except (ConnectionError, RuntimeError):
                pass
        self._log.info(
            "putmedia_closed",
            persisted=self._persisted,
            dropped=self.dropped,
            body_ended=self._stop and not self._closing,
            bytes=self._bytes,
        )
        return response

    # --- events --------------------------------------------------------------------------

    async def _handle(self, events: list[IngestEvent]) -> None:
        for event in events:
            if isinstance(event, FragmentStarted):
                self._last_timecode = event.timecode
                self._current = _Current(
                    event.timecode, self._emu.store.allocate_number(), int(self._emu.clock() * 1000)
                )
                self._ack(self._fields("BUFFERING"))
                if self._closing:
                    self._stop = True
                    return
            elif isinstance(event, FragmentComplete):
                if self._closing:
                    continue
                await self._complete(event)
            elif isinstance(event, IngestFailed):
                self._log.info(
                    "putmedia_invalid_body", error_id=event.error_id, reason=event.message
                )
                self._error(event.error_id, discard_current=True)
            if self._stop and not self._closing:
                return
        if self._closing:
            self._stop = True

    async def _complete(self, fragment: FragmentComplete) -> None:
        current, self._current = self._current, None
        if current is None:  # cannot happen: a Cluster's Timecode starts every fragment
            current = _Current(fragment.timecode, self._emu.store.allocate_number(), 0)
        self._current = current  # for the acks below
        try:
            injected = self._emu.faults.error_for_fragment(self._stream)
            if injected is not None:
                error_id, keep_open = injected
                self._error(error_id, close=not keep_open)
                return
            rec = self._rec
            if rec.deleted or self._emu.store.streams.get(self._stream) is not rec:
                self._error(limits.ERR_STREAM_DELETED)
                return
            base = self._start_ms if self._relative else 0
            producer_ms = base + fragment.first_ms
            previous = self._last_ms if self._emu.config.timecode_check == "connection" else None
            if self._emu.config.timecode_check == "stream":
                previous = rec.last_ms
            if previous is not None and producer_ms <= previous:
                self._error(limits.ERR_TIMECODE)
                return
            minimum = self._emu.config.min_fragment_ms
            if minimum and fragment.duration_ms < minimum:
                # AWS publishes no threshold and no error id for this: counted, logged, stored
                self._emu.stats.short_fragments[self._stream] += 1
                self._log.warning(
                    "putmedia_short_fragment", duration_ms=fragment.duration_ms, minimum=minimum
                )
            self._ack(self._fields("RECEIVED"))
            try:
                meta = await self._emu.store.persist(
                    rec,
                    fragment,
                    number=current.number,
                    producer_ms=producer_ms,
                    server_ms=current.server_ms,
                )
            except OSError as exc:
                self._log.warning("putmedia_persist_failed", error=str(exc))
                self._error(limits.ERR_STREAM_DELETED if rec.deleted else limits.ERR_PERSIST)
                return
            self._last_ms = meta.last_ms
            self._emu.stats.fragments_persisted[self._stream] += 1
            self._ack(self._fields("PERSISTED"))
            self._persisted += 1
            if self._drop_after is not None and self._persisted >= self._drop_after:
                self._queue.put_nowait((self._due(), _DROP))
                self._stop = True
        finally:
            self._current = None

    def _error(self, error_id: int, *, close: bool = True, discard_current: bool = False) -> None:
        self._emu.stats.fragments_errored[self._stream] += 1
        self._emu.stats.errors[str(error_id)] += 1
        self._log.info(
            "putmedia_error_ack",
            error_id=error_id,
            fragment_timecode=self._current.timecode if self._current else None,
        )
        # Producers parse FragmentTimecode on every non-IDLE ack: without a fragment in
        # progress, name the connection's last one (0 before any).
        fields: dict[str, Any] = {"EventType": "ERROR", "FragmentTimecode": self._last_timecode}
        if self._current is not None:
            fields = self._fields("ERROR")
        fields["ErrorId"] = error_id
        self._ack(fields)
        if discard_current:
            self._current = None
        if close:
            self._closing = True

    def _fields(self, event_type: str) -> dict[str, Any]:
        assert self._current is not None
        return {
            "EventType": event_type,
            "FragmentTimecode": self._current.timecode,
            "FragmentNumber": self._current.number,
        }

    # --- the ack writer ------------------------------------------------------------------

    def _due(self) -> float:
        due = asyncio.get_running_loop().time() + self._emu.faults.ack_delay(self._stream)
        self._last_due = max(self._last_due, due)  # a shorter delay never overtakes
        return self._last_due

    def _ack(self, fields: dict[str, Any]) -> None:
        if self._emu.faults.withhold_acks(self._stream):
            return
        payload = json.dumps(fields, separators=(",", ":")).encode()
        self._queue.put_nowait((self._due(), payload))

    async def _write_acks(self, response: web.StreamResponse) -> None:
        loop = asyncio.get_running_loop()
        broken = False
        while True:
            due, item = await self._queue.get()
            if item is _END:
                return
            if broken:
                continue
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if item is _DROP:
                self._log.info("putmedia_dropped_injected", fragments=self._persisted)
                self.dropped = True
                transport = self._request.transport
                if transport is not None:
                    transport.abort()
                broken = True
                continue
            try:
                await response.write(item)
            except (ConnectionError, RuntimeError):
                broken = True
