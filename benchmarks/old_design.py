"""A faithful re-creation of the old design, for the load benchmark's side-by-side figures.

The old system ran one Lambda invocation per 250 ms chunk: it prepended the stream's header
chunk, ran one `ffmpeg` process to decode it to 16 kHz mono s16 PCM and wrap it as MKV, then
made one PutMedia request for that chunk alone. Here the same work runs in one process that
speaks our speaker protocol (so `load.py` drives both designs with the same speakers), with
two differences that only flatter the old design: its MKV is valid (ffmpeg's Matroska muxer;
the original "never wrote valid MKV"), and each chunk's PutMedia is awaited until PERSISTED
so the speaker can get an `ack` (the original fired and forgot). The stream is ensured and the
data endpoint fetched once per session, not per chunk. CPU of this process includes the ffmpeg
children it waited for (`psutil`'s children times).

Run: `python benchmarks/old_design.py --port P --endpoint http://127.0.0.1:E`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time

import aiohttp
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from kvs_ingest.config import load_settings
from kvs_ingest.kvs.acks import AckEventType, AckParser
from kvs_ingest.kvs.control import make_kvs
from kvs_ingest.kvs.signing import sign_request
from kvs_ingest.mkv import EbmlReader, MasterStart
from kvs_ingest.mkv.ids import ID

FFMPEG = (
    "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i", "pipe:0",
    "-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le", "-f", "matroska", "pipe:1",
)  # fmt: skip
PUT_ATTEMPTS = 10
MIN_CALL_INTERVAL = 0.21  # s between PutMedia calls on one stream (KVS: 5 per second)


def header_of(first_chunk: bytes) -> bytes:
    """Everything before the first Cluster: what the old Lambda stored and prepended."""
    for ev in EbmlReader().feed(first_chunk):
        if isinstance(ev, MasterStart) and ev.id == ID.CLUSTER:
            return first_chunk[: ev.offset]
    return first_chunk


async def to_mkv(data: bytes) -> bytes:
    """One ffmpeg process: WebM/Opus in, MKV (A_PCM/INT/LIT 16 kHz mono) out."""
    proc = await asyncio.create_subprocess_exec(
        *FFMPEG,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate(data)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg exited {proc.returncode}")
    return out


class OldDesign:
    def __init__(self, endpoint: str) -> None:
        self.settings = load_settings(kvs_backend="endpoint", kvs_endpoint_url=endpoint)
        self.kvs = make_kvs(self.settings, endpoint_url=endpoint)
        self.http: aiohttp.ClientSession | None = None
        self.errors = 0

    async def put_media(self, stream: str, endpoint: str, start: float, mkv: bytes) -> bool:
        """One PutMedia request carrying one chunk; True once its fragment is PERSISTED."""
        assert self.http is not None
        url = endpoint.rstrip("/") + "/putMedia"
        creds = await self.kvs.credentials()
        headers = sign_request(
            url,
            {
                "x-amzn-stream-name": stream,
                "x-amzn-fragment-timecode-type": "RELATIVE",
                "x-amzn-producer-start-timestamp": f"{start:.3f}",
                "x-amzn-fragment-acknowledgment-required": "1",
                "user-agent": "old-lambda/1.0",
            },
            creds,
            self.settings_region,
        )
        async with self.http.post(url, data=mkv, headers=headers) as resp:
            if resp.status != 200:
                return False
            parser = AckParser()
            persisted = False
            async for piece in resp.content.iter_any():
                for event in parser.feed(piece):
                    if event.type is AckEventType.PERSISTED:
                        persisted = True
                    elif event.type is AckEventType.ERROR:
                        return False
            return persisted

    @property
    def settings_region(self) -> str:
        return os.environ.get("AWS_DEFAULT_REGION", "us-east-1")

    async def handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        session = path.split("/")[3] if path.count("/") >= 4 else "old"
        stream = f"session-{session}"
        await self.kvs.ensure_stream(stream)
        endpoint = await self.kvs.data_endpoint(stream)
        await ws.send(json.dumps({"type": "ready", "session": session, "stream": stream}))
        header = b""
        started = time.time()
        media_ms = 0.0
        done: dict[int, bool] = {}
        acked = -1
        tasks: set[asyncio.Task[None]] = set()
        lock = asyncio.Lock()
        previous: asyncio.Future[None] | None = None
        last_call = [0.0]

        async def one_chunk(
            seq: int, data: bytes, offset_ms: float, previous: asyncio.Future[None] | None
        ) -> None:
            nonlocal acked
            try:
                mkv = await to_mkv(data)
                # KVS allows one PutMedia per stream at a time and 5 calls/s: the invocations
                # queue per stream and retry when throttled, as the Lambda's retries did.
                ok = False
                if previous is not None:  # in order, or timecodes would go backwards (4004)
                    await asyncio.shield(previous)
                for _ in range(PUT_ATTEMPTS):
                    # Stay under KVS's 5 PutMedia calls per second per stream.
                    wait = last_call[0] + MIN_CALL_INTERVAL - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    last_call[0] = time.monotonic()
                    ok = await self.put_media(stream, endpoint, started + offset_ms / 1000.0, mkv)
                    if ok:
                        break
            except Exception:
                ok = False
            if not ok:
                self.errors += 1
            done[seq] = ok
            async with lock:
                while done.get(acked + 1):
                    acked += 1
                    with contextlib.suppress(ConnectionClosed):
                        await ws.send(json.dumps({"type": "ack", "seq": acked, "persisted_ms": 0}))

        seq = 0
        try:
            async for message in ws:
                if isinstance(message, str):
                    if json.loads(message).get("type") == "stop":
                        break
                    continue
                if seq == 0:
                    header = header_of(message)
                    data = message
                else:
                    data = header + message
                task = asyncio.create_task(one_chunk(seq, data, media_ms, previous))
                previous = task
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                seq += 1
                media_ms += 240.0  # one chunk's audio; only orders the fragments
        except ConnectionClosed:
            return
        if tasks:
            await asyncio.gather(*tasks)
        code = 1000 if all(done.get(s) for s in range(seq)) else 1011
        await ws.close(code)

    async def run(self, host: str, port: int, stop: asyncio.Event) -> None:
        async with contextlib.AsyncExitStack() as stack:
            if hasattr(self.kvs, "__aenter__"):
                self.kvs = await stack.enter_async_context(self.kvs)  # type: ignore[arg-type]
            self.http = await stack.enter_async_context(aiohttp.ClientSession())
            async with serve(self.handle, host, port, compression=None, max_size=None):
                print(f"listening on {host}:{port}", flush=True)
                await stop.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--endpoint", required=True, help="the KVS emulator's URL")
    args = parser.parse_args()

    async def amain() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await OldDesign(args.endpoint).run(args.host, args.port, stop)

    asyncio.run(amain())
    return 0


if __name__ == "__main__":
    sys.exit(main())
