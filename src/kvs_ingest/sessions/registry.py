"""`SessionRegistry`: session id -> Session, shared by every socket of the session.

The stream is ensured once per session even when sockets race (single-flight per id). A session
that has had no speaker for the grace period and has nothing left to flush is let go; its
timeline end is remembered so a later session of the same id continues after it (timecodes
never go backwards, even when audio arrived faster than real time).
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from typing import Any

import aiohttp

from kvs_ingest.config import Settings
from kvs_ingest.kvs.control import KvsControl
from kvs_ingest.kvs.errors import KvsError
from kvs_ingest.kvs.tuning import Tuning
from kvs_ingest.kvs.uploader import StreamUploader
from kvs_ingest.logging import get_logger
from kvs_ingest.sessions.errors import KvsUnavailable, SessionClosed
from kvs_ingest.sessions.session import Session, State, wall_ms

log = get_logger(__name__)

_REAP_SECONDS = 1.0
_REMEMBER = 10_000  # session ends kept after their sessions were let go
# ListFragments looks this far back (at least) for where a stream's stored audio ends.
_LOOKBACK_MIN_SECONDS = 15 * 60.0


class SessionRegistry:
    def __init__(
        self,
        settings: Settings,
        kvs: KvsControl,
        *,
        tuning: Tuning | None = None,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self.settings = settings
        self.kvs = kvs
        self.tuning = tuning or kvs.tuning
        self._http = http
        self._own_http = http is None
        self._sessions: dict[str, Session] = {}
        self._opening: dict[str, asyncio.Future[Session]] = {}
        self._last_end: OrderedDict[str, int] = OrderedDict()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def healthy(self) -> bool:
        """The control plane answered its last call (for /readyz)."""
        return self.kvs.healthy

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    async def open(self, session_id: str) -> Session:
        """The session, created (and its stream ensured) on first use; raises KvsUnavailable."""
        if self._closed:
            raise SessionClosed("shutting down")
        session = self._sessions.get(session_id)
        if session is not None and session.state is State.ACTIVE:
            session.touch()
            return session
        future = self._opening.get(session_id)
        if future is None:
            future = asyncio.ensure_future(self._create(session_id))
            self._opening[session_id] = future
            future.add_done_callback(functools.partial(self._opened, session_id))
        return await asyncio.shield(future)

    def _opened(self, session_id: str, future: asyncio.Future[Session]) -> None:
        if self._opening.get(session_id) is future:
            del self._opening[session_id]
        if not future.cancelled():
            future.exception()

    async def _create(self, session_id: str) -> Session:
        # The speaker's audio started arriving now, not once the stream is ready: the first
        # speaker is placed here, so the timeline does not run ahead of the wall clock by the
        # CreateStream + ACTIVE wait.
        opened_ms = wall_ms()
        stream = self.settings.stream_name(session_id)
        try:
            created = await self.kvs.ensure_stream(
                stream, tags={"kvs-ingest:session": session_id, "created-by": "kvs-ingest"}
            )
        except KvsError as exc:
            log.warning("kvs_stream_unavailable", session=session_id, error=str(exc))
            raise KvsUnavailable(str(exc)) from exc
        stored_end = 0 if created else await self._stored_end(session_id, stream)
        uploader = StreamUploader(
            self.kvs,
            self._client(),
            stream_name=stream,
            rotate_seconds=self.settings.putmedia_rotate_seconds,
            tuning=self.tuning,
        )
        start = max(opened_ms, self._last_end.get(session_id, 0), stored_end)
        session = Session(
            session_id,
            stream,
            uploader,
            fragment_ms=self.settings.fragment_ms,
            buffer_max_seconds=self.settings.buffer_max_seconds,
            grace_seconds=self.settings.session_grace_seconds,
            start_ms=start,
            first_anchor_ms=opened_ms,
            tuning=self.tuning,
        )
        session.start()
        self._sessions[session_id] = session
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="reaper")
        return session

    async def _stored_end(self, session_id: str, stream: str) -> int:
        """Where the stream's stored audio ends (0: unknown or empty).

        Another process (a previous task, or the one before a restart) may have written this
        session with timecodes ahead of the wall clock (a rate-limit burst); our audio must start
        after it or KVS refuses it (4004). On failure the wall clock is used, and the uploader's
        re-timing of a first-attempt 4004 is the safety net.
        """
        lookback = max(
            _LOOKBACK_MIN_SECONDS,
            2 * self.settings.buffer_max_seconds
            + self.settings.session_grace_seconds
            + self.settings.drain_timeout_seconds,
        )
        try:
            end = await self.kvs.stored_end_ms(stream, lookback_seconds=lookback)
        except Exception as exc:  # best effort: permissions, throttling, an old emulator
            log.warning("kvs_stored_end_unknown", session=session_id, error=str(exc))
            return 0
        if end is not None and end > wall_ms():
            log.info("session_continues_ahead", session=session_id, ahead_ms=end - wall_ms())
        return end or 0

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                auto_decompress=False,
            )
        return self._http

    async def _reap(self) -> None:
        """Let go of sessions idle past the grace period."""
        while not self._closed:
            await asyncio.sleep(_REAP_SECONDS)
            for session_id, session in list(self._sessions.items()):
                if session.idle:
                    self._forget(session_id, session)
                    await session.close(1.0)

    def _forget(self, session_id: str, session: Session) -> None:
        if self._sessions.get(session_id) is session:
            del self._sessions[session_id]
        self._last_end[session_id] = session.end_ms
        self._last_end.move_to_end(session_id)
        while len(self._last_end) > _REMEMBER:
            self._last_end.popitem(last=False)

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109 (deadline passed in)
        """Flush every session until PERSISTED or the deadline; log what was not flushed."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        sessions = list(self._sessions.items())
        results: list[Any] = await asyncio.gather(
            *(s.close(timeout) for _, s in sessions), return_exceptions=True
        )
        lost = [sid for (sid, _), ok in zip(sessions, results, strict=True) if ok is not True]
        for sid, session in sessions:
            self._forget(sid, session)
        if lost:
            log.warning("sessions_not_flushed", count=len(lost), sessions=lost[:20])
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None
