"""The load process: many simulated browser speakers in one asyncio process.

Every speaker replays the same pre-encoded Chrome-like WebM/Opus chunks (see `encode_chunks`)
in real time over its own WebSocket (its own session), and records, from its own view, when
each chunk went out, when the `ack` covering it came back, how late its sends were against the
recorder's clock (a speaker "behind real time"), and how the socket closed. One process can
drive a few hundred speakers; `load.py` starts more than one process for bigger steps.

Run by `load.py`: `python benchmarks/speakers.py --url ws://… --chunks FILE --count N …`;
it writes one JSON result file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvs_ingest.client.speak import wait_for_close

OPUS_RATE = 48_000


@dataclass(frozen=True)
class Recording:
    """What every speaker sends: chunks (the first carries the WebM header) and their end times.

    `header` is everything before the first Cluster (the old design prepends it to each chunk);
    `decoded_ms` is what our decoder makes of all chunks, the figure acks must reach.
    """

    chunks: list[bytes]
    end_ms: list[float]
    header: bytes
    decoded_ms: int

    @property
    def seconds(self) -> float:
        return self.end_ms[-1] / 1000.0


def encode_chunks(source: Path) -> Recording:
    """Encode `source` like Chrome's MediaRecorder (WebM/Opus, 48 kHz, 60 ms frames, live) with
    one ~250 ms Cluster per chunk, so each chunk is one `dataavailable` and the old design's
    "header + chunk" is a decodable file (a fair figure for it)."""
    import av

    from kvs_ingest.media import SAMPLE_RATE, StreamDecoder
    from kvs_ingest.mkv import EbmlReader, MasterStart
    from kvs_ingest.mkv.ids import ID
    from kvs_ingest.mkv.reader import Leaf, read_uint

    parts: list[bytes] = []

    class Sink:
        def write(self, data: bytes) -> int:
            parts.append(bytes(data))
            return len(data)

    out = av.open(Sink(), "w", format="webm", options={"live": "1", "cluster_time_limit": "250"})
    with av.open(str(source)) as src:
        in_stream = src.streams.audio[0]
        layout = "stereo" if (in_stream.codec_context.channels or 1) > 1 else "mono"
        stream: Any = out.add_stream("libopus", rate=OPUS_RATE, options={"frame_duration": "60"})
        stream.layout = layout
        stream.bit_rate = 64_000
        resampler = av.AudioResampler(format="s16", layout=layout, rate=OPUS_RATE)
        frames = [*src.decode(in_stream), None]
        for frame in frames:
            for rframe in resampler.resample(frame):
                for packet in stream.encode(rframe):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    out.close()
    data = b"".join(parts)

    starts: list[int] = []
    times: list[int] = []
    for ev in EbmlReader().feed(data):
        if isinstance(ev, MasterStart) and ev.id == ID.CLUSTER:
            starts.append(ev.offset)
        elif isinstance(ev, Leaf) and ev.id == ID.TIMECODE:
            times.append(read_uint(ev.data))
    bounds = [0, *starts[1:], len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    end_ms = [float(t) for t in times[1:]]
    decoder = StreamDecoder("webm")
    samples = sum(p.samples for c in chunks for p in decoder.feed(c))
    samples += sum(p.samples for p in decoder.flush())
    end_ms.append(max(end_ms[-1] if end_ms else 0.0, samples * 1000 / SAMPLE_RATE))
    return Recording(chunks, end_ms, data[: starts[0]], samples * 1000 // SAMPLE_RATE)


@dataclass
class SpeakerResult:
    index: int
    sent: int = 0
    sent_ms: float = 0.0
    persisted_ms: int = 0
    last_ack_seq: int = -1
    close_code: int | None = None
    error: str | None = None
    max_late: float = 0.0  # how late the worst send was against the recorder's clock (s)
    latencies: list[float] = field(default_factory=list)  # per acked chunk, seconds


async def run_speaker(
    index: int,
    url: str,
    rec: Recording,
    start: float,
    *,
    stop_timeout: float,
    client_ip: str,
) -> SpeakerResult:
    """One speaker: connect, wait for its start, send each chunk when recorded, `stop`."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    result = SpeakerResult(index)
    sent_at: list[float] = []
    loop = asyncio.get_running_loop()

    async def receive(ws: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                now = loop.time()
                msg = json.loads(message)
                kind = msg.get("type")
                if kind == "ack":
                    seq = int(msg["seq"])
                    for s in range(result.last_ack_seq + 1, min(seq, len(sent_at) - 1) + 1):
                        result.latencies.append(now - sent_at[s])
                    result.last_ack_seq = max(result.last_ack_seq, seq)
                    result.persisted_ms = max(result.persisted_ms, int(msg["persisted_ms"]))
                elif kind == "error":
                    result.error = f"{msg.get('code')}: {msg.get('message')}"

    try:
        async with connect(
            url,
            subprotocols=["kvs-ingest.v1"],  # type: ignore[list-item]
            additional_headers={"X-Forwarded-For": client_ip},
            compression=None,
            open_timeout=60,
            max_size=None,
            ping_interval=None,
        ) as ws:
            receiver = asyncio.create_task(receive(ws))
            delay = start - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = loop.time()
            try:
                for chunk, end_ms in zip(rec.chunks, rec.end_ms, strict=False):
                    due = t0 + end_ms / 1000.0
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if receiver.done():
                        break
                    now = loop.time()
                    result.max_late = max(result.max_late, now - due)
                    sent_at.append(now)
                    await ws.send(chunk)
                    result.sent += 1
                    result.sent_ms = end_ms
                else:
                    await ws.send('{"type":"stop"}')
            except ConnectionClosed:
                pass
            await wait_for_close(receiver, stop_timeout)
            result.close_code = ws.close_code
    except Exception as exc:  # a refused or broken connection is a result, not a crash
        result.error = result.error or f"{type(exc).__name__}: {exc}"
    return result


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    rec: Recording = pickle.loads(args.chunks.read_bytes())
    tasks = []
    for k in range(args.count):
        i = args.first + k
        # Speakers are not in step: each starts at its own phase within one chunk interval.
        phase = (i * 0.6180339887 % 1.0) * 0.24
        url = f"{args.url.rstrip('/')}/v1/sessions/{args.prefix}{i}/speaker?format=webm"
        ip = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        tasks.append(
            run_speaker(
                i, url, rec, args.start_at + phase, stop_timeout=args.stop_timeout, client_ip=ip
            )
        )
    results = await asyncio.gather(*tasks)
    return {"speakers": [asdict(r) for r in results], "load_cpu": time.process_time()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--chunks", type=Path, required=True, help="pickled Recording")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="index of the first speaker")
    parser.add_argument("--prefix", default="load-", help="session id prefix")
    parser.add_argument("--start-at", type=float, required=True, help="epoch seconds")
    parser.add_argument("--stop-timeout", type=float, default=60.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        outcome = runner.run(run_all(args))
    args.out.write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
