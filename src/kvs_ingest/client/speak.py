"""`kvs-ingest speak`: a speaker client that behaves like a browser's MediaRecorder.

It encodes any audio file (PyAV) to WebM/Opus at 48 kHz the way Chrome's MediaRecorder does
(or Ogg/Opus like Firefox, or raw PCM), cuts the byte stream into timeslice chunks at block
boundaries, so later chunks start mid-cluster with no header, and sends them over the speaker
protocol in real time (or `--speed N`). Acks are printed as JSON lines on stdout. At the end it
sends `stop` and exits 0 once the server closes 1000 (everything persisted).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from kvs_ingest.mkv.ids import ID
from kvs_ingest.mkv.reader import EbmlReader, Leaf, MasterStart, parse_block, read_uint

FORMATS = ("webm", "ogg", "pcm_s16le")
OPUS_RATE = 48_000
PCM_RATE = 16_000

# Exit statuses: 0 everything persisted; 1 closed with an error; 2 bad arguments / file.
EXIT_OK, EXIT_CLOSED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class Chunk:
    """One timeslice of the recording: what MediaRecorder's `dataavailable` would hand over."""

    data: bytes
    end_ms: float  # media time covered once this chunk is sent


class _Sink:
    """A write-only, non-seekable file for the muxer: output like a live recorder's."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


def encode(path: Path, fmt: str = "webm") -> tuple[bytes, float]:
    """The file re-encoded like a browser recorder; returns (bytes, duration in seconds)."""
    if fmt == "pcm_s16le":
        return _encode_pcm(path)
    sink = _Sink()
    out = av.open(sink, "w", format=fmt, options={"live": "1"} if fmt == "webm" else {})
    with av.open(str(path)) as src:
        in_stream = src.streams.audio[0]
        channels = min(2, in_stream.codec_context.channels or 1)
        layout = "mono" if channels == 1 else "stereo"
        stream: Any = out.add_stream("libopus", rate=OPUS_RATE, options={"frame_duration": "60"})
        stream.layout = layout
        stream.bit_rate = 64_000 * channels
        resampler = av.AudioResampler(format="s16", layout=layout, rate=OPUS_RATE)
        samples = 0
        for frame in src.decode(in_stream):
            for rframe in resampler.resample(frame):
                samples += rframe.samples
                for packet in stream.encode(rframe):
                    out.mux(packet)
        for rframe in resampler.resample(None):
            samples += rframe.samples
            for packet in stream.encode(rframe):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    out.close()
    return sink.getvalue(), samples / OPUS_RATE


def _encode_pcm(path: Path) -> tuple[bytes, float]:
    parts: list[bytes] = []
    with av.open(str(path)) as src:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=PCM_RATE)
        for frame in src.decode(src.streams.audio[0]):
            parts.extend(bytes(f.planes[0])[: f.samples * 2] for f in resampler.resample(frame))
        parts.extend(bytes(f.planes[0])[: f.samples * 2] for f in resampler.resample(None))
    data = b"".join(parts)
    return data, len(data) / 2 / PCM_RATE


def webm_block_starts(data: bytes) -> list[tuple[int, float]]:
    """(stream offset, media ms) of every SimpleBlock of a WebM stream, in order."""
    reader = EbmlReader()
    events = reader.feed(data) + reader.close()
    starts: list[tuple[int, float]] = []
    cluster_ms = 0
    for ev in events:
        if isinstance(ev, MasterStart) and ev.id == ID.CLUSTER:
            cluster_start = ev.offset
            starts.append((cluster_start, float(cluster_ms)))
        elif isinstance(ev, Leaf) and ev.id == ID.TIMECODE:
            cluster_ms = read_uint(ev.data)
        elif isinstance(ev, Leaf) and ev.id == ID.SIMPLE_BLOCK:
            starts.append((ev.offset, float(cluster_ms + parse_block(ev.data).timecode)))
    return starts


def chunk(data: bytes, duration: float, fmt: str, timeslice_ms: float) -> list[Chunk]:
    """Cut the recording into timeslices: at block starts for WebM, by byte rate otherwise."""
    if not data:
        return []
    n = max(1, int(duration * 1000 // timeslice_ms) + (1 if duration * 1000 % timeslice_ms else 0))
    if fmt == "webm":
        starts = [s for s in webm_block_starts(data) if s[0] > 0]
        cuts: list[int] = []
        for k in range(1, n):
            boundary = k * timeslice_ms
            after = [off for off, ms in starts if ms >= boundary]
            cuts.append(after[0] if after else len(data))
    else:
        align = 2 if fmt == "pcm_s16le" else 1
        cuts = [int(len(data) * k / n) // align * align for k in range(1, n)]
    edges = [0, *cuts, len(data)]
    chunks = []
    for k in range(n):
        a, b = edges[k], max(edges[k], edges[k + 1])
        chunks.append(Chunk(data[a:b], min((k + 1) * timeslice_ms, duration * 1000)))
    return chunks


@dataclass
class Outcome:
    close_code: int | None = None
    close_reason: str = ""
    acks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    ready: dict[str, Any] | None = None
    sent: int = 0


def speaker_url(url: str, session: str, fmt: str) -> str:
    if "/v1/sessions/" not in url:
        url = url.rstrip("/") + f"/v1/sessions/{session}/speaker"
    sep = "&" if "?" in url else "?"
    if "format=" not in url:
        url += f"{sep}format={fmt}"
        if fmt == "pcm_s16le":
            url += f"&rate={PCM_RATE}&channels=1"
    return url


async def speak(
    url: str,
    chunks: list[Chunk],
    *,
    token: str | None,
    speed: float = 1.0,
    timeslice_ms: float = 250.0,
    out: Any = sys.stdout,
    open_timeout: float = 30.0,
    stop_timeout: float = 120.0,
) -> Outcome:
    """Send `chunks` like a recorder (one per timeslice), then `stop`; collect what came back."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    outcome = Outcome()
    protocols: list[Any] = ["kvs-ingest.v1"] + ([f"bearer.{token}"] if token else [])

    async def receive(ws: Any) -> None:
        try:
            async for message in ws:
                msg = json.loads(message)
                kind = msg.get("type")
                if kind == "ack":
                    outcome.acks.append(msg)
                elif kind == "error":
                    outcome.errors.append(msg)
                elif kind == "ready":
                    outcome.ready = msg
                print(json.dumps(msg), file=out, flush=True)
        except ConnectionClosed:
            pass

    async with connect(
        url, subprotocols=protocols, compression=None, open_timeout=open_timeout, max_size=None
    ) as ws:
        receiver = asyncio.create_task(receive(ws))
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            for i, c in enumerate(chunks):
                if speed > 0:
                    # MediaRecorder hands a chunk over when its timeslice has been recorded.
                    due = start + ((i + 1) * timeslice_ms / 1000.0) / speed
                    delay = due - loop.time()
                    if delay > 0:
                        done, _ = await asyncio.wait({receiver}, timeout=delay)
                        if done:
                            break  # the server closed the socket
                await ws.send(c.data)
                outcome.sent += 1
            else:
                await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass
        await wait_for_close(receiver, stop_timeout)
        outcome.close_code = ws.close_code
        outcome.close_reason = ws.close_reason or ""
    return outcome


async def wait_for_close(receiver: asyncio.Task[None], timeout: float) -> None:  # noqa: ASYNC109
    """Give the task reading the socket `timeout` seconds to see the server's close (after
    `stop` the server closes once everything is persisted), then stop it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(receiver), timeout)
    receiver.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await receiver


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="any audio file ffmpeg can read")
    parser.add_argument(
        "--url", default="ws://127.0.0.1:8080", help="service URL (ws:// or wss://)"
    )
    parser.add_argument("--session", default="demo", help="session id (default demo)")
    parser.add_argument(
        "--token", help="speaker token (default: minted with KVS_INGEST_AUTH_SECRET if set)"
    )
    parser.add_argument("--format", choices=FORMATS, default="webm", help="what to send")
    parser.add_argument("--timeslice", type=float, default=250.0, help="ms per chunk (250)")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="times real time (0 = as fast as possible)"
    )


def run(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"kvs-ingest speak: no such file: {args.file}", file=sys.stderr)
        return EXIT_USAGE
    if args.timeslice <= 0 or args.speed < 0:
        print("kvs-ingest speak: --timeslice must be > 0 and --speed >= 0", file=sys.stderr)
        return EXIT_USAGE
    token = args.token or _minted_token(args.session)
    try:
        data, duration = encode(args.file, args.format)
    except (av.error.FFmpegError, IndexError) as exc:
        print(f"kvs-ingest speak: cannot read audio from {args.file}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    chunks = chunk(data, duration, args.format, args.timeslice)
    url = speaker_url(args.url, args.session, args.format)
    started = time.monotonic()
    outcome = asyncio.run(
        speak(url, chunks, token=token, speed=args.speed, timeslice_ms=args.timeslice)
    )
    last = outcome.acks[-1] if outcome.acks else {}
    summary = {
        "type": "summary",
        "chunks": len(chunks),
        "sent": outcome.sent,
        "audio_seconds": round(duration, 3),
        "last_ack_seq": last.get("seq"),
        "persisted_ms": last.get("persisted_ms"),
        "close_code": outcome.close_code,
        # after an error close: the chunks after this one are the ones to send again
        "held_seq": outcome.errors[-1].get("held_seq") if outcome.errors else None,
        "seconds": round(time.monotonic() - started, 3),
    }
    print(json.dumps(summary), flush=True)
    if outcome.close_code != 1000:
        detail = outcome.errors[-1]["message"] if outcome.errors else outcome.close_reason
        print(f"kvs-ingest speak: closed {outcome.close_code}: {detail}", file=sys.stderr)
        return EXIT_CLOSED
    return EXIT_OK


def _minted_token(session: str) -> str | None:
    from kvs_ingest.config import load_settings

    settings = load_settings()
    if not settings.auth_secret:
        return None
    from kvs_ingest.server.auth import mint_token

    return mint_token(
        settings.auth_secret,
        session,
        ttl=3600,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
