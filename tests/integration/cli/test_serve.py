"""`kvs-ingest serve` as a process: SIGTERM drains 20 live speakers (DESIGN.md §5)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from kvs_ingest.emulator import Emulator, EmulatorConfig
from kvs_ingest.server.auth import mint_token

from ..server.chain import corpus_chunks, ffmpeg_pcm, pcm_of, read_stream
from .procs import CMD, clean_env, start_serve, t

SECRET = "serve-test-secret-serve-test-secret-0123"
SPEAKERS = 20
DRAIN_TIMEOUT = 20.0


async def live_speaker(url: str, token: str, chunks: list[bytes], started: asyncio.Event) -> tuple:
    """Sends chunks in real time until the server's `error` notice; returns what it saw."""
    sent: list[bytes] = []
    messages: list[dict] = []
    notified = asyncio.Event()
    async with connect(
        url, subprotocols=["kvs-ingest.v1", f"bearer.{token}"], compression=None,
        open_timeout=t(30),
    ) as ws:  # fmt: skip

        async def receive() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    msg = json.loads(raw)
                    messages.append(msg)
                    if msg["type"] == "error":
                        notified.set()

        receiver = asyncio.create_task(receive())
        try:
            for i, chunk in enumerate(chunks):
                if notified.is_set():
                    break
                await ws.send(chunk)
                sent.append(chunk)
                if i == 3:
                    started.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(notified.wait(), 0.25)
        except ConnectionClosed:
            pass
        await asyncio.wait_for(receiver, t(60))
        return ws.close_code, messages, sent


async def test_sigterm_drains_twenty_live_speakers(tmp_path: Path) -> None:
    """SIGTERM with 20 speakers live: each gets `error` 1012 and close 1012, all they sent is in
    KVS, the process exits 0 within DRAIN_TIMEOUT_SECONDS, and no token reached the logs."""
    chunks = corpus_chunks()[:8]  # one recording, ~2 s; speakers stop at the notice
    async with Emulator(EmulatorConfig(data_dir=tmp_path / "kvs", active_delay_seconds=0.2)) as emu:
        env = clean_env(
            KVS_INGEST_KVS_BACKEND="endpoint", KVS_INGEST_KVS_ENDPOINT_URL=emu.url,
            KVS_INGEST_AUTH_MODE="hs256", KVS_INGEST_AUTH_SECRET=SECRET,
            KVS_INGEST_DRAIN_TIMEOUT_SECONDS=str(DRAIN_TIMEOUT),
        )  # fmt: skip
        serve = await start_serve(env)
        try:
            starts = [asyncio.Event() for _ in range(SPEAKERS)]
            tokens = [mint_token(SECRET, f"drain-{i}") for i in range(SPEAKERS)]
            tasks = [
                asyncio.create_task(
                    live_speaker(
                        f"{serve.ws}/v1/sessions/drain-{i}/speaker",
                        tokens[i],
                        # each speaker is one recording: only its first chunk has the header
                        chunks if i % 2 else chunks[:6],
                        starts[i],
                    )
                )
                for i in range(SPEAKERS)
            ]
            await asyncio.wait_for(asyncio.gather(*(s.wait() for s in starts)), t(60))
            signalled = time.monotonic()
            serve.proc.send_signal(signal.SIGTERM)
            results = await asyncio.wait_for(asyncio.gather(*tasks), t(60))
            code = await serve.stop()
            took = time.monotonic() - signalled
        finally:
            if serve.proc.returncode is None:
                serve.proc.kill()
                await serve.proc.wait()
        assert code == 0, serve.lines[-20:]
        assert took < DRAIN_TIMEOUT + 5
        for close_code, messages, _ in results:
            assert close_code == 1012, messages
            assert [m["code"] for m in messages if m["type"] == "error"] == [1012]
        for i, (_, _, sent) in enumerate(results):
            blocks = await read_stream(emu.url, f"session-drain-{i}")
            want = ffmpeg_pcm(b"".join(sent))
            got = pcm_of(blocks)
            assert abs(len(got) - len(want)) <= 320, (i, len(sent), len(got), len(want))
    assert serve.events("drained"), serve.lines[-10:]
    assert serve.events("listening")[0]["loop"] == "uvloop"
    logged = json.dumps(serve.lines)
    assert not any(tok in logged for tok in tokens)  # never a token in the logs
    assert SECRET not in logged


async def test_sigint_on_an_idle_server_exits_0_and_readyz_answers_before(tmp_path: Path) -> None:
    """Ctrl-C drains too: exit 0. Before it, /readyz is 200 over real HTTP."""
    import aiohttp

    env = clean_env(KVS_INGEST_EMBEDDED_DATA_DIR=str(tmp_path / "data"))
    serve = await start_serve(env)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{serve.port}/readyz") as resp:
                assert resp.status == 200
        code = await serve.stop(signal.SIGINT)
    finally:
        if serve.proc.returncode is None:
            serve.proc.kill()
            await serve.proc.wait()
    assert code == 0
    assert serve.events("auth_disabled")  # AUTH_MODE=none is announced as a warning
    assert serve.lines[0]["event"] == "kvs_backend" and serve.lines[0]["backend"] == "embedded"


async def test_bad_setting_stops_serve_with_one_line() -> None:
    """A bad value stops `serve` at start with exit 2 and a line naming the variable."""
    proc = await asyncio.create_subprocess_exec(
        *CMD, "serve", env=clean_env(KVS_INGEST_RATE_LIMIT_FACTOR="0.5"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), t(60))
    assert proc.returncode == 2
    assert "KVS_INGEST_RATE_LIMIT_FACTOR" in err.decode()
