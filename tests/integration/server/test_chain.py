"""Speakers through the whole chain (server → sessions → PutMedia → emulator), read back with
boto3, compared with ffmpeg's decode of what was sent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from .chain import chain, corpus_chunks, correlation, ffmpeg_pcm, pcm_of, read_stream
from .conftest import read_until_closed, speaker, t

SAMPLES_20MS = 320


async def send_all(ws, chunks: list[bytes], *, pace: float = 0.0) -> None:
    for c in chunks:
        await ws.send(c)
        if pace:
            await asyncio.sleep(pace)


async def test_browser_recording_is_acked_and_lands_whole(tmp_path: Path) -> None:
    """A real Chromium recording: ready, acks up to the last chunk, 1000, and in KVS the same
    audio ffmpeg decodes from the chunks (length ± 20 ms, correlation ≥ 0.99)."""
    chunks = corpus_chunks()
    async with chain(tmp_path) as c:
        async with speaker(c.srv.ws_url("rec1")) as ws:
            ready = json.loads(await asyncio.wait_for(ws.recv(), t(30)))
            assert ready["type"] == "ready" and ready["stream"] == "session-rec1"
            await send_all(ws, chunks)
            await ws.send(json.dumps({"type": "stop"}))
            ending = await read_until_closed(ws, within=60)
        assert ending.code == 1000, ending.messages
        assert ending.errors == []
        seqs = [a["seq"] for a in ending.acks]
        assert seqs == sorted(set(seqs)) and seqs[-1] == len(chunks) - 1
        blocks = await read_stream(c.emulator.url, "session-rec1")
    got = pcm_of(blocks)
    want = ffmpeg_pcm(b"".join(chunks))
    assert abs(len(got) - len(want)) <= SAMPLES_20MS, (len(got), len(want))
    assert correlation(got, want) >= 0.99
    assert ending.acks[-1]["persisted_ms"] == len(got) * 1000 // 16000
    times = [b.ms for b in blocks]
    assert times == sorted(times)
