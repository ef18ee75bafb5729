"""The ingest server: one websockets server on one port for speakers, probes and metrics.

`IngestServer` owns the listening socket, admission (auth → origin → capacity), the map of
which socket speaks for which session (takeover), readiness and the drain. `SpeakerConnection`
is the thin asyncio loop around one socket: read a message, feed the `StreamDecoder`, hand the
PCM to the session's `Speaker` (whose back-pressure stops the reads), turn persisted counts
into acks. Protocol rules live in `protocol.SpeakerProtocol`; close codes in `errors.close_for`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
import time
import weakref
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from kvs_ingest.config import Settings
from kvs_ingest.logging import get_logger
from kvs_ingest.media import MediaError, StreamDecoder
from kvs_ingest.server import http as web
from kvs_ingest.server import metrics
from kvs_ingest.server.auth import Identity, Verifier, find_token, make_verifier
from kvs_ingest.server.errors import (
    PUBLIC_MESSAGES,
    AtCapacity,
    CloseCode,
    Draining,
    Forbidden,
    PeerError,
    Replaced,
    StorageUnavailable,
    TimedOut,
    TooFast,
    UnsupportedMedia,
    close_for,
)
from kvs_ingest.server.handshake import AnsweringConnection
from kvs_ingest.server.protocol import (
    SAMPLE_RATE,
    SUBPROTOCOL,
    Keepalive,
    Media,
    SpeakerProtocol,
    SpeakerRequest,
    Stop,
    error_message,
    match_speaker_path,
    parse_speaker_request,
    ready_message,
)
from kvs_ingest.server.ratelimit import AudioRateLimiter

log = get_logger(__name__)

# The drain keeps reading a notified speaker until it is quiet this long, at most the max.
DRAIN_QUIET_SECONDS = 0.5
DRAIN_READ_MAX_SECONDS = 3.0

# What a `stop` whose stream ended inside an element is told (see `_finish`).
CUT_SHORT_NOTHING = (
    "undecodable media: the stream ended inside an incomplete element and nothing of it "
    "could be decoded; nothing was stored"
)
CUT_SHORT_NORMAL = (  # a close reason: at most 123 bytes (RFC 6455 §5.5)
    "stopped; everything is persisted but an incomplete last frame (stream ended mid-element)"
)

# Close codes after which a socket's decoded-but-unflushed tail still goes to the session.
_KEEP_TAIL = frozenset({CloseCode.SERVICE_RESTART, CloseCode.REPLACED, CloseCode.TIMEOUT})


@dataclass(frozen=True)
class ServerLimits:
    """Timings and limits the settings do not name (DESIGN.md is silent on their values).

    Start/idle timeouts and the audio-rate limit are settings (`START_TIMEOUT_SECONDS`,
    `IDLE_TIMEOUT_SECONDS`, `RATE_BURST_SECONDS`, `RATE_LIMIT_FACTOR`).
    """

    max_connections_per_client: int = 100  # per client address (X-Forwarded-For last hop)
    # `stop` waits this long for PERSISTED, then 4503: KVS going quiet costs up to two stale
    # connections (2 x 20 s, the second opened while acks were still withheld) plus the backlog
    # they leave, which goes at the ack rate; 60 s was not enough in the 30-minute soak.
    finish_timeout: float = 120.0
    handover_timeout: float = 10.0  # a replaced/draining socket has this long to hand over
    ping_interval: float = 20.0  # keeps idle proxies (ALB: 60 s) from dropping the socket
    # A ping unanswered this long *while the server waits for the peer* closes the socket 4408.
    ping_timeout: float = 20.0
    lag_probe_interval: float = 0.1  # 10 probes a second: a p99 over the histogram means something


class SpeakerHandle(Protocol):
    samples_written: int
    samples_persisted: int

    async def write(self, pcm: bytes) -> None: ...
    async def finish(self, timeout: float) -> bool: ...  # noqa: ASYNC109
    def detach(self) -> None: ...


class Registry(Protocol):
    """What the server needs of `kvs_ingest.sessions.SessionRegistry`."""

    @property
    def healthy(self) -> bool: ...

    async def open(self, session_id: str) -> Any: ...
    async def close(self, timeout: float) -> None: ...  # noqa: ASYNC109
    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Admission:
    """The outcome of a speaker handshake's checks, kept until the socket's handler runs."""

    request: SpeakerRequest | None
    identity: Identity | None
    client: str
    refusal: PeerError | None = None


class IngestServer:
    """Run with `await server.run(shutdown)`; or `start()` … `drain()` … `stop()` by hand.

    `shutdown` is any awaitable (an `Event().wait()` in tests, the signal handler's event in
    `serve`); when it completes the server drains (DESIGN.md §5) and `run` returns.
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        limits: ServerLimits | None = None,
        verifier: Verifier | None = None,
        static_files: dict[str, tuple[bytes, str]] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.limits = limits or ServerLimits()
        self.verifier = verifier or make_verifier(settings)
        self.static_files = static_files
        self.draining = False
        self.port: int | None = None
        self._server: Server | None = None
        self._admissions: weakref.WeakKeyDictionary[ServerConnection, Admission] = (
            weakref.WeakKeyDictionary()
        )
        self._connections: set[SpeakerConnection] = set()
        self._by_session: dict[str, SpeakerConnection] = {}
        self._per_client: dict[str, int] = {}
        self._lag_task: asyncio.Task[None] | None = None
        self._next_conn_id = 0
        # Random per process: tells a reconnecting client whether the process that holds its
        # audio (an `error`'s held_seq) is the one it talks to now.
        self.instance = secrets.token_hex(8)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and listen; `port` then holds the bound port (useful with PORT=0)."""
        if self.static_files is None:
            self.static_files = (
                await asyncio.to_thread(web.load_static) if self.settings.demo_page else {}
            )
        if self.settings.demo_page and not self.static_files:
            log.warning("demo_page_missing", folder=str(web.STATIC_DIR))
        ssl_ctx: ssl.SSLContext | None = None
        if self.settings.tls_cert_file is not None and self.settings.tls_key_file is not None:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(self.settings.tls_cert_file, self.settings.tls_key_file)
        m = self.settings.max_message_bytes
        self._server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            create_connection=AnsweringConnection,  # 400 for requests with a body
            select_subprotocol=_select_subprotocol,
            compression=None,  # binary audio does not compress; deflate costs CPU and memory
            # The library's hard cap sits above ours so that an oversized message still gets
            # its JSON `error` before 1009; beyond 2x the library closes 1009 by itself.
            max_size=2 * m + 1024,
            # Messages queued per socket before the library stops reading TCP: with back-pressure
            # from a full ledger this bounds a socket's memory to max_queue x max_size.
            max_queue=8,
            # Pings are SpeakerConnection._keepalive's: the library times a pong from its ping
            # and so blamed a client for our own unread backlog (1011 "keepalive ping timeout").
            ping_interval=None,
            ping_timeout=None,
            ssl=ssl_ctx,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        self._lag_task = asyncio.create_task(self._probe_lag())
        log.info(
            "listening",
            host=self.settings.host,
            port=self.port,
            tls=ssl_ctx is not None,
            auth_mode=str(self.settings.auth_mode),
            demo_page=bool(self.static_files),
            loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        )

    async def run(self, shutdown: Awaitable[Any]) -> None:
        """Serve until `shutdown` completes, then drain and stop."""
        if self._server is None:
            await self.start()
        await shutdown
        await self.drain()
        await self.stop()

    async def drain(self) -> None:
        """SIGTERM: readyz 503, speakers hand over and close 1012, sessions flush (bounded)."""
        if self.draining:
            return
        started = time.monotonic()
        deadline = started + self.settings.drain_timeout_seconds
        self.draining = True
        metrics.DRAINING.set(1)
        conns = list(self._connections)
        log.info("draining", speakers=len(conns), sessions=len(self.registry))
        for conn in conns:
            conn.request_stop(Draining())
        budget = min(self.limits.handover_timeout, self.settings.drain_timeout_seconds / 3)
        await _wait_handed_over(conns, budget)
        remaining = max(0.5, deadline - time.monotonic())
        await self.registry.close(remaining)
        log.info("drained", seconds=round(time.monotonic() - started, 3))

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # --- readiness ------------------------------------------------------------------------

    def readiness(self) -> str | None:
        """None when ready for speakers, else the reason /readyz gives with its 503."""
        if self.draining:
            return "draining"
        if len(self._connections) >= self.settings.max_connections:
            return "full"
        if not self.registry.healthy:
            return "kvs_unavailable"
        return None

    # --- handshake ------------------------------------------------------------------------

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/healthz":
            return web.json_response(200, {"status": "ok"})
        if path == "/readyz":
            reason = self.readiness()
            if reason is None:
                return web.json_response(200, {"status": "ready"})
            return web.json_response(503, {"status": "unavailable", "reason": reason})
        if path == "/metrics":
            metrics.SESSIONS.set(len(self.registry))
            return web.response(200, metrics.render(), metrics.CONTENT_TYPE)
        if match_speaker_path(path) is not None:
            if "websocket" not in request.headers.get("Upgrade", "").lower():
                return web.text_response(
                    426, "this is a WebSocket endpoint\n", extra={"Upgrade": "websocket"}
                )
            self._admissions[conn] = await self._admit(conn, request)
            return None  # accept; refusals are sent on the open socket (browsers can read those)
        if self.static_files:
            found = web.static_response(self.static_files, path)
            if found is not None:
                return found
        return web.text_response(404, "not found\n")

    async def _admit(self, conn: ServerConnection, request: Request) -> Admission:
        """parse path → auth → origin, before any media is read; capacity comes in `_handle`."""
        client = _client_key(conn, request)
        try:
            speaker_request = parse_speaker_request(request.path)
        except PeerError as exc:
            return Admission(None, None, client, exc)
        offered = _offered_subprotocols(request)
        found = find_token(request.path, request.headers, offered)
        if found is not None and found.via == "query":
            log.warning("token_in_query", session=speaker_request.session_id, discouraged=True)
        try:
            identity = await self.verifier.verify(
                found.token if found else None, speaker_request.session_id
            )
        except PeerError as exc:
            metrics.AUTH_FAILURES.labels(exc.reason).inc()
            log.info(
                "auth_refused", session=speaker_request.session_id, reason=exc.reason, client=client
            )
            return Admission(speaker_request, None, client, exc)
        origins = self.settings.origins
        origin = request.headers.get("Origin")
        if origins is not None and origin is not None and origin not in origins:
            metrics.AUTH_FAILURES.labels("origin").inc()
            log.info("origin_refused", session=speaker_request.session_id, origin=origin)
            return Admission(
                speaker_request, identity, client, Forbidden("origin not allowed", reason="origin")
            )
        return Admission(speaker_request, identity, client)

    # --- sockets --------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        admission = self._admissions.pop(ws, None)
        if admission is None:  # not a speaker path (cannot happen: process_request answers)
            await _refuse(ws, PeerError("unknown path", reason="bad_path"))
            return
        refusal = admission.refusal or self._capacity_refusal(admission.client)
        if refusal is not None:
            metrics.REFUSALS.labels(str(int(refusal.code))).inc()
            await _refuse(ws, refusal)
            return
        assert admission.request is not None
        self._next_conn_id += 1
        conn = SpeakerConnection(self, ws, admission.request, admission.client, self._next_conn_id)
        self._connections.add(conn)
        self._per_client[admission.client] = self._per_client.get(admission.client, 0) + 1
        metrics.CONNECTIONS.set(len(self._connections))
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            left = self._per_client.get(admission.client, 1) - 1
            if left:
                self._per_client[admission.client] = left
            else:
                self._per_client.pop(admission.client, None)
            if self._by_session.get(conn.session_id) is conn:
                del self._by_session[conn.session_id]
            metrics.CONNECTIONS.set(len(self._connections))

    def _capacity_refusal(self, client: str) -> PeerError | None:
        if self.draining:
            return Draining()
        if len(self._connections) >= self.settings.max_connections:
            return AtCapacity()
        if self._per_client.get(client, 0) >= self.limits.max_connections_per_client:
            return TooFast("too many connections from this client", reason="per_client")
        return None

    async def take_over(self, conn: SpeakerConnection) -> None:
        """Make `conn` the session's speaker; an older socket hands over, then closes 4409."""
        previous = self._by_session.get(conn.session_id)
        self._by_session[conn.session_id] = conn
        if previous is None or previous is conn:
            return
        previous.request_stop(Replaced())
        await _wait_handed_over([previous], self.limits.handover_timeout)

    async def _probe_lag(self) -> None:
        """Event-loop lag: how late a sleep wakes up (decode runs on the loop; watch this)."""
        interval = self.limits.lag_probe_interval
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - before - interval)
            metrics.EVENT_LOOP_LAG.set(lag)
            metrics.EVENT_LOOP_LAG_HISTOGRAM.observe(lag)


class SpeakerConnection:
    """One speaker socket: its decoder, its protocol state and its `Speaker` in the session."""

    def __init__(
        self,
        server: IngestServer,
        ws: ServerConnection,
        request: SpeakerRequest,
        client: str,
        conn_id: int,
    ) -> None:
        self.server = server
        self.ws = ws
        self.request = request
        self.session_id = request.session_id
        self.limits = server.limits
        self.log = log.bind(conn=conn_id, session=request.session_id, client=client)
        self.protocol = SpeakerProtocol(max_message_bytes=server.settings.max_message_bytes)
        self.decoder = StreamDecoder(request.format, rate=request.rate, channels=request.channels)
        self.settings = server.settings
        self.limiter = AudioRateLimiter(
            server.settings.rate_burst_seconds, server.settings.rate_limit_factor
        )
        self.handed_over = asyncio.Event()
        self.speaker: SpeakerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._stop: asyncio.Future[PeerError] = self._loop.create_future()
        self._task = asyncio.current_task()
        self._arrivals: dict[int, float] = {}
        self._ack_event = asyncio.Event()
        self._ack_closing = False
        self._sent_seq = -1
        self._latest_ack_json: tuple[int, str] | None = None
        self._persisted_reported = 0
        self._notice_deadline: float | None = None
        self.notice_sent = False
        # When the read loop began waiting for the peer with nothing left to read (None while
        # it handles a message, writes, opens the session or flushes): the pong clock.
        self._waiting_since: float | None = None

    def request_stop(self, error: PeerError) -> None:
        """Ask the socket to hand its decoded audio to the session and close with `error`."""
        if not self._stop.done():
            self._stop.set_result(error)

    async def run(self) -> None:
        """Serve the socket until `stop`, an error, a takeover, the drain or the client leaves."""
        code: CloseCode | None = CloseCode.NORMAL  # None: the client already closed
        message = PUBLIC_MESSAGES[CloseCode.NORMAL]
        hand_over_tail = False
        ack_task: asyncio.Task[None] | None = None
        keepalive = asyncio.create_task(self._keepalive())
        try:
            session = await self.server.registry.open(self.session_id)
            await self.server.take_over(self)
            if self._stop.done() and not isinstance(self._stop.result(), Draining):
                raise self._stop.result()  # replaced while opening; a drain still reads first
            self.speaker = session.attach(self._on_persisted)
            ack_task = asyncio.create_task(self._send_acks())
            await self.ws.send(
                ready_message(
                    self.session_id,
                    session.stream_name,
                    self.request.format,
                    self.server.instance,
                )
            )
            self.log.info("speaker_ready", stream=session.stream_name)
            message = await self._read_loop()
        except ConnectionClosed as exc:
            code, hand_over_tail = None, True
            self.log.info("client_gone", code=exc.rcvd.code if exc.rcvd else None)
        except asyncio.CancelledError:
            # A takeover or the drain gave up waiting (a write stuck on a full ledger): let go
            # now, with the code of the request that gave up (4409 or 1012).
            self._detach()
            wanted = self._stop.result() if self._stop.done() else Draining()
            await self._close(wanted.code, wanted.hint)
            metrics.CONNECTIONS_TOTAL.labels(str(int(wanted.code))).inc()
            raise
        except Exception as exc:
            code, message = close_for(exc)
            # Leaving for reasons that are not the audio's fault: its decoded tail is kept.
            hand_over_tail = code in _KEEP_TAIL
            if code is CloseCode.UNSUPPORTED_MEDIA:
                metrics.DECODE_ERRORS.inc()
            if code is CloseCode.INTERNAL_ERROR:
                self.log.exception("speaker_failed")
            else:
                reason = getattr(exc, "reason", type(exc).__name__)
                self.log.info("speaker_closing", code=int(code), reason=reason)
        finally:
            keepalive.cancel()
            if ack_task is not None:
                await self._stop_acks(ack_task)
        if hand_over_tail:
            await self._hand_over_tail()
        self._detach()
        metrics.CONNECTIONS_TOTAL.labels(str(int(code)) if code else "client").inc()
        if code is not None:
            await self._close(code, message)

    async def _close(self, code: CloseCode, message: str) -> None:
        """The `error` (unless the drain's notice was it) says what this socket left held."""
        await _close(
            self.ws, code, message, notice_sent=self.notice_sent, held_seq=self.protocol.held_seq
        )

    def _detach(self) -> None:
        """The socket lets go of the session; a waiting newer socket may attach now."""
        if self.speaker is not None:
            self.speaker.detach()
            self.speaker = None
        self.handed_over.set()

    async def _hand_over_tail(self) -> None:
        """The decoder's tail goes to the session before the socket lets go (takeover, drain)."""
        try:
            try:
                tail = self.decoder.flush()
            except MediaError as exc:  # cut inside a packet: keep the frames it completed
                tail = exc.pcm
            if self.speaker is not None and self.protocol.next_seq > 0:
                await asyncio.wait_for(
                    self._write(self.protocol.next_seq - 1, tail, rate_check=False),
                    self.limits.handover_timeout,
                )
        except Exception as exc:  # the tail is best effort; the socket is going anyway
            self.log.warning("tail_not_handed_over", error=type(exc).__name__)

    async def _read_loop(self) -> str:
        """Read until `stop` is done; returns the 1000 close's reason (errors raise)."""
        start_deadline = self._loop.time() + self.settings.start_timeout_seconds
        got_media = False
        while True:
            if got_media:
                timeout = self.settings.idle_timeout_seconds
            else:
                timeout = min(
                    self.settings.idle_timeout_seconds, start_deadline - self._loop.time()
                )
            message = await self._next_message(timeout, got_media)
            event = self.protocol.receive(message)
            if isinstance(event, Media):
                got_media = True
                self._arrivals[event.seq] = self._loop.time()
                metrics.BYTES_IN.inc(len(event.data))
                metrics.MEDIA_MESSAGES_IN.inc()
                pcms = self.decoder.feed(event.data)
                await self._write(event.seq, pcms, rate_check=True)
            elif isinstance(event, Keepalive):
                metrics.MESSAGES_IN.labels("keepalive").inc()
            elif isinstance(event, Stop):
                metrics.MESSAGES_IN.labels("stop").inc()
                return await self._finish()

    async def _next_message(self, wait: float, got_media: bool) -> bytes | str:
        """The next message, or the stop request's error, or 4408 after `wait` seconds.

        A drain does not end the socket at once: the speaker is sent the 1012 `error` first and
        its messages are still read until it falls quiet (it stops sending on the notice), so
        what it sent before it knew is in the session; then the socket closes 1012.
        """
        if self._stop.done() and self._notice_deadline is None:
            error = self._stop.result()
            if not isinstance(error, Draining):
                raise error
            await self._send_notice(error)
        if self._notice_deadline is not None:
            left = self._notice_deadline - self._loop.time()
            if left <= 0:
                raise self._stop.result()
            waiters: set[asyncio.Future[Any]] = set()
            wait = min(DRAIN_QUIET_SECONDS, left)
        else:
            waiters = {self._stop}
        recv = asyncio.ensure_future(self.ws.recv())
        self._waiting_since = self._loop.time()
        try:
            done, _ = await asyncio.wait(
                {recv, *waiters}, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._waiting_since = None
        if recv in done:
            return recv.result()
        recv.cancel()  # websockets' recv() is cancellation-safe: no message is lost
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await recv
        if self._stop.done():
            if self._notice_deadline is not None:
                raise self._stop.result()  # quiet after the notice: close now
            return await self._next_message(wait, got_media)  # handles the stop request
        if got_media:
            raise TimedOut("idle too long", reason="idle")
        raise TimedOut("no media within the start timeout", reason="start")

    async def _keepalive(self) -> None:
        """Ping every `ping_interval`; a pong overdue by `ping_timeout` of waiting closes 4408.

        A pong travels behind every byte the client sent before it. While the server has not
        read those (a flood of tiny messages worked through at its own pace, reads stopped by
        a full ledger, a slow session open) no pong can arrive however alive the client is,
        so the clock runs only while the read loop waits for the peer with nothing left to
        read (`_waiting_since`, RFC 6455 §5.5.2-3 say nothing of timing). A peer silent that
        long is gone or stuck: the socket ends like an idle one (`TimedOut`, its decoded tail
        kept), not 1011, which says the server failed. Cancelled when the socket ends.
        """
        interval, timeout = self.limits.ping_interval, self.limits.ping_timeout
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(interval)
                pong = asyncio.ensure_future(await self.ws.ping())  # a Future already
                sent = self._loop.time()
                while not pong.done():
                    waiting = self._waiting_since
                    left = timeout
                    if waiting is not None:
                        left = max(sent, waiting) + timeout - self._loop.time()
                        if left <= 0:
                            self.log.info("ping_unanswered", waited=round(timeout, 3))
                            self.request_stop(TimedOut("no answer to ping", reason="ping"))
                            return
                    await asyncio.wait({pong}, timeout=left)

    async def _send_notice(self, error: PeerError) -> None:
        """The `error` message ahead of the close, while the socket is still read."""
        self._notice_deadline = self._loop.time() + DRAIN_READ_MAX_SECONDS
        self.notice_sent = True
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(error_message(int(error.code), error.hint))

    async def _write(self, seq: int, pcms: Sequence[Any], *, rate_check: bool) -> None:
        """One message's audio goes to the session in one write: it is held whole or not at
        all (a full ledger raises before it), so `held_seq` in an `error` is exact."""
        assert self.speaker is not None
        samples = sum(pcm.samples for pcm in pcms)
        if samples:
            data = pcms[0].data if len(pcms) == 1 else b"".join(pcm.data for pcm in pcms)
            await self.speaker.write(data)
        self.protocol.decoded(seq, samples)
        seconds = samples / SAMPLE_RATE
        metrics.AUDIO_IN_SECONDS.inc(seconds)
        if rate_check and not self.limiter.consume(seconds, self._loop.time()):
            raise TooFast("sending faster than real time", reason="rate")

    async def _finish(self) -> str:
        """`stop`: flush the decoder, wait until everything is PERSISTED, then close 1000.

        A stream cut short at `stop` (it ends inside an element, or before its audio was
        described) loses nothing that was decoded, and is never a silent 1000:
        - nothing of it could be decoded: 4415 at once, `error` `CUT_SHORT_NOTHING`; nothing
          was stored, so 1000 ("everything persisted") would tell the client a lie;
        - some audio was decoded: it and the codec's tail from the complete frames are
          written and waited for like any `stop`, the final `ack` covers every message (an
          ack speaks of completed frames: DESIGN.md §4.4), and the close is 1000 with the
          reason `CUT_SHORT_NORMAL` (the incomplete last frame was not stored). No `error`:
          there is nothing to fix or resend (a resend would duplicate), and Chromium's
          MediaRecorder chunks end inside a block, so a client that sends `stop` without
          flushing its recorder does exactly this.
        Persisting still comes first: if it fails the socket closes 4503 as for any `stop`.
        """
        cut: MediaError | None = None
        try:
            tail = self.decoder.flush()
        except MediaError as exc:
            # The frames it completed go to the session with the rest; the partial one is not
            # a frame (browsers' recordings always end on a whole element: tests/data/browser).
            cut, tail = exc, exc.pcm
            self.log.warning(
                "stream_ended_mid_element",
                error=str(exc)[:200],
                samples=self.decoder.samples_out,
                messages=self.protocol.next_seq,
            )
            if self.decoder.samples_out == 0:
                raise UnsupportedMedia(CUT_SHORT_NOTHING, reason="cut_short") from None
        if self.protocol.next_seq > 0:
            await self._write(self.protocol.next_seq - 1, tail, rate_check=False)
        assert self.speaker is not None
        finish: asyncio.Future[Any] = asyncio.ensure_future(
            self.speaker.finish(self.limits.finish_timeout)
        )
        stop: asyncio.Future[Any] = self._stop
        done, _ = await asyncio.wait({finish, stop}, return_when=asyncio.FIRST_COMPLETED)
        if finish not in done:
            finish.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await finish
            raise self._stop.result()
        if not finish.result():
            raise StorageUnavailable(
                "not everything was persisted in time; reconnect and resend", reason="finish"
            )
        final = self.protocol.finished()
        if final is not None:
            self._queue_ack(final.seq, final.to_json())
        return CUT_SHORT_NORMAL if cut is not None else PUBLIC_MESSAGES[CloseCode.NORMAL]

    # --- acks -----------------------------------------------------------------------------

    def _on_persisted(self, samples: int) -> None:
        """Called on the loop by the session with this speaker's cumulative persisted count."""
        before = self.protocol.acked_seq
        ack = self.protocol.persisted(samples)
        now_persisted = self.protocol.persisted_samples
        if now_persisted > self._persisted_reported:
            metrics.AUDIO_PERSISTED_SECONDS.inc(
                (now_persisted - self._persisted_reported) / SAMPLE_RATE
            )
            self._persisted_reported = now_persisted
        if ack is not None:
            self._observe_latency(before, ack.seq)
            self._queue_ack(ack.seq, ack.to_json())

    def _observe_latency(self, before: int, seq: int) -> None:
        now = self._loop.time()
        for s in range(before + 1, seq + 1):
            arrived = self._arrivals.pop(s, None)
            if arrived is not None:
                metrics.PERSIST_LATENCY.observe(now - arrived)

    def _queue_ack(self, seq: int, text: str) -> None:
        self._latest_ack_json = (seq, text)
        self._ack_event.set()

    async def _send_acks(self) -> None:
        """Sends the latest ack whenever one is queued; acks are cumulative, so they coalesce."""
        while True:
            await self._ack_event.wait()
            self._ack_event.clear()
            latest = self._latest_ack_json
            if latest is not None and latest[0] > self._sent_seq:
                self._sent_seq = latest[0]
                try:
                    await self.ws.send(latest[1])
                except ConnectionClosed:
                    return
                metrics.ACKS_SENT.inc()
            if self._ack_closing and not self._ack_event.is_set():
                return

    async def _stop_acks(self, task: asyncio.Task[None]) -> None:
        self._ack_closing = True
        self._ack_event.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), 5.0)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()


async def _wait_handed_over(conns: Sequence[SpeakerConnection], budget: float) -> None:
    """Wait until `conns` have handed over; cancel the ones stuck past `budget` seconds."""
    waits = [asyncio.ensure_future(c.handed_over.wait()) for c in conns]
    if not waits:
        return
    _, pending = await asyncio.wait(waits, timeout=budget)
    for w in pending:
        w.cancel()
    for conn in conns:
        if not conn.handed_over.is_set() and conn._task is not None:
            conn.log.warning("handover_timeout")
            conn._task.cancel()
    stuck = [c.handed_over.wait() for c in conns if not c.handed_over.is_set()]
    if stuck:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*stuck), 2.0)


async def _refuse(ws: ServerConnection, error: PeerError) -> None:
    """An accepted socket closed at once with `error`'s code, the JSON error sent first."""
    log.info("speaker_refused", code=int(error.code), reason=error.reason)
    await _close(ws, error.code, error.hint)


async def _close(
    ws: ServerConnection,
    code: CloseCode,
    message: str,
    *,
    notice_sent: bool = False,
    held_seq: int | None = None,
) -> None:
    """Send the JSON `error` (once; with `held_seq` for a speaker socket, not a refusal) and
    close with `code`."""
    with contextlib.suppress(ConnectionClosed):
        if code is not CloseCode.NORMAL and not notice_sent:
            await ws.send(error_message(int(code), message, held_seq))
        await ws.close(int(code), _reason(message))


def _reason(message: str) -> str:
    """A close reason must fit the 123-byte close frame (RFC 6455 §5.5)."""
    data = message.encode()[:120]
    return data.decode(errors="ignore")


def _offered_subprotocols(request: Request) -> list[str]:
    offered: list[str] = []
    for value in request.headers.get_all("Sec-WebSocket-Protocol"):
        offered.extend(p.strip() for p in value.split(",") if p.strip())
    return offered


def _select_subprotocol(
    conn: ServerConnection, subprotocols: Sequence[Subprotocol]
) -> Subprotocol | None:
    """Accept `kvs-ingest.v1`; the `bearer.<token>` entry is read, never echoed back."""
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in subprotocols else None


def _client_key(conn: ServerConnection, request: Request) -> str:
    # Behind the ALB the peer is the balancer; it appends the client's address as the LAST
    # X-Forwarded-For entry (earlier entries come from the client and can be forged).
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded:
        return forwarded.split(",")[-1].strip()
    addr = conn.remote_address
    return str(addr[0]) if isinstance(addr, tuple) and addr else str(addr)
