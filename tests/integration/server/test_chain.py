"""Speakers through the whole chain (server → sessions → PutMedia → emulator), read back with
boto3, compared with ffmpeg's decode of what was sent."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from pathlib import Path

import numpy as np
from prometheus_client import REGISTRY

from kvs_ingest.kvs.tuning import Tuning
from kvs_ingest.server.app import ServerLimits

from .chain import add_fault, chain, corpus_chunks, correlation, ffmpeg_pcm, pcm_of, read_stream
from .conftest import http_get, read_until_closed, speaker, t

SAMPLES_20MS = 320
WATCHED = (
    "kvs_ingest_bytes_in_total",
    "kvs_ingest_audio_in_seconds_total",
    "kvs_ingest_audio_persisted_seconds_total",
    "kvs_ingest_chunk_persisted_latency_seconds_count",
)


def value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def assert_recordings(got: np.ndarray, parts: list[np.ndarray]) -> None:
    """`got` is the recordings one after the other: total length ± 20 ms each, every part
    correlating ≥ 0.99 with its place in `got`."""
    assert abs(len(got) - sum(map(len, parts))) <= SAMPLES_20MS * len(parts)
    start = 0
    for part in parts:
        assert correlation(got[start : start + len(part)], part) >= 0.99
        start += len(part)


async def send_all(ws, chunks: list[bytes], *, pace: float = 0.0) -> None:
    for c in chunks:
        await ws.send(c)
        if pace:
            await asyncio.sleep(pace)


async def test_browser_recording_is_acked_and_lands_whole(tmp_path: Path) -> None:
    """A real Chromium recording: ready, acks up to the last chunk, 1000, and in KVS the same
    audio ffmpeg decodes from the chunks (length ± 20 ms, correlation ≥ 0.99)."""
    chunks = corpus_chunks()
    before = {name: value(name) for name in WATCHED}
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
        status, exposition, _ = await http_get(c.srv.http + "/metrics")
    assert status == 200
    for family in (  # the sink's metrics show on the same /metrics
        "kvs_ingest_fragments_sent_total", "kvs_ingest_fragments_persisted_total",
        "kvs_ingest_fragments_errored_total", "kvs_ingest_putmedia_connects_total",
        "kvs_ingest_putmedia_reconnects_total", "kvs_ingest_buffered_seconds",
        "kvs_ingest_sessions_open", "kvs_ingest_connections_open",
    ):  # fmt: skip
        assert f"# TYPE {family.removesuffix('_total')}" in exposition, family
    got = pcm_of(blocks)
    want = ffmpeg_pcm(b"".join(chunks))
    assert abs(len(got) - len(want)) <= SAMPLES_20MS, (len(got), len(want))
    assert correlation(got, want) >= 0.99
    assert ending.acks[-1]["persisted_ms"] == len(got) * 1000 // 16000
    times = [b.ms for b in blocks]
    assert times == sorted(times)
    grew = {name: value(name) - before[name] for name in WATCHED}
    assert grew["kvs_ingest_bytes_in_total"] == sum(map(len, chunks))
    assert abs(grew["kvs_ingest_audio_in_seconds_total"] - len(got) / 16000) < 0.001
    assert abs(grew["kvs_ingest_audio_persisted_seconds_total"] - len(got) / 16000) < 0.001
    assert grew["kvs_ingest_chunk_persisted_latency_seconds_count"] == len(chunks)


async def ack_seq_reaches(ws, seq: int, within: float = 20) -> list[dict]:
    """Read messages until an ack covers `seq`; returns what was read."""
    seen: list[dict] = []

    async def until() -> None:
        while True:
            msg = json.loads(await ws.recv())
            seen.append(msg)
            if msg.get("type") == "ack" and msg["seq"] >= seq:
                return

    await asyncio.wait_for(until(), t(within))
    return seen


async def test_reconnect_in_a_row_continues_the_stream(tmp_path: Path) -> None:
    """A socket that leaves without `stop`, then a new one: one stream, timecodes increasing,
    both recordings whole."""
    chunks = corpus_chunks()
    first = chunks[:7]
    async with chain(tmp_path) as c:
        async with speaker(c.srv.ws_url("rc")) as ws:
            await send_all(ws, first)
            await ack_seq_reaches(ws, 6)
        async with speaker(c.srv.ws_url("rc")) as ws:
            await send_all(ws, chunks)
            await ws.send(json.dumps({"type": "stop"}))
            ending = await read_until_closed(ws, within=60)
        assert ending.code == 1000
        blocks = await read_stream(c.emulator.url, "session-rc")
    assert_recordings(pcm_of(blocks), [ffmpeg_pcm(b"".join(first)), ffmpeg_pcm(b"".join(chunks))])
    times = [b.ms for b in blocks]
    assert all(a < b for a, b in itertools.pairwise(times))


async def test_concurrent_socket_takes_over_with_4409(tmp_path: Path) -> None:
    """A second socket for a live session: the first gets `error` 4409 and close 4409 after its
    audio went to the session; the second carries on in the same stream."""
    chunks = corpus_chunks()
    first = chunks[:7]
    async with chain(tmp_path) as c:
        async with speaker(c.srv.ws_url("tk")) as a:
            await send_all(a, first)
            await ack_seq_reaches(a, 6)
            async with speaker(c.srv.ws_url("tk")) as b:
                ending_a = await read_until_closed(a)
                assert ending_a.code == 4409
                assert [e["code"] for e in ending_a.errors] == [4409]
                ready = json.loads(await asyncio.wait_for(b.recv(), t(20)))
                assert ready["type"] == "ready"
                await send_all(b, chunks)
                await b.send(json.dumps({"type": "stop"}))
                ending_b = await read_until_closed(b, within=60)
        assert ending_b.code == 1000
        blocks = await read_stream(c.emulator.url, "session-tk")
    assert_recordings(pcm_of(blocks), [ffmpeg_pcm(b"".join(first)), ffmpeg_pcm(b"".join(chunks))])


async def test_stop_after_a_chunk_cut_inside_a_block_still_succeeds(tmp_path: Path) -> None:
    """`stop` after a chunk that ends inside an element: the complete frames are persisted,
    acked up to the last chunk, and the socket closes 1000 (not 4415)."""
    chunks = corpus_chunks()[:8]
    async with chain(tmp_path) as c:
        async with speaker(c.srv.ws_url("cut")) as ws:
            await send_all(ws, chunks)
            await ws.send(json.dumps({"type": "stop"}))
            ending = await read_until_closed(ws, within=60)
        blocks = await read_stream(c.emulator.url, "session-cut")
    assert ending.code == 1000, ending.messages
    assert ending.acks[-1]["seq"] == len(chunks) - 1
    want = ffmpeg_pcm(b"".join(chunks))
    assert abs(len(pcm_of(blocks)) - len(want)) <= SAMPLES_20MS


async def test_legacy_audio_chunk_messages_are_media(tmp_path: Path) -> None:
    """The old API Gateway `audioChunk` base64 message is decoded and acked like binary."""
    chunks = corpus_chunks()
    async with chain(tmp_path) as c:
        async with speaker(c.srv.ws_url("legacy")) as ws:
            for ch in chunks:
                msg = {"action": "audioChunk", "audioData": base64.b64encode(ch).decode()}
                await ws.send(json.dumps(msg))
            await ws.send(json.dumps({"type": "stop"}))
            ending = await read_until_closed(ws, within=60)
    assert ending.code == 1000
    assert ending.acks[-1]["seq"] == len(chunks) - 1


async def test_drain_closes_live_speakers_with_1012_after_handing_over(tmp_path: Path) -> None:
    """The drain: a live speaker gets `error` 1012 and close 1012; what it sent is in KVS."""
    chunks = corpus_chunks()
    first = chunks[:9]
    async with chain(tmp_path) as c:
        async with speaker(c.srv.ws_url("dr")) as ws:
            await send_all(ws, first)
            await ws.send(json.dumps({"type": "keepalive"}))  # processed after every chunk
            await asyncio.sleep(0.3 * t(1))
            c.srv.shutdown.set()
            ending = await read_until_closed(ws)
            await asyncio.wait_for(c.srv.task, t(30))
        assert ending.code == 1012 and [e["code"] for e in ending.errors] == [1012]
        blocks = await read_stream(c.emulator.url, "session-dr")
    want = ffmpeg_pcm(b"".join(first))
    got = pcm_of(blocks)
    assert abs(len(got) - len(want)) <= SAMPLES_20MS, (len(got), len(want))


async def test_takeover_of_a_socket_stuck_on_a_full_ledger(tmp_path: Path) -> None:
    """An old socket blocked by back-pressure (KVS withholding acks) still yields to a newer one
    within the hand-over bound: 4409 for the old, `ready` for the new."""
    chunks = corpus_chunks()
    limits = ServerLimits(handover_timeout=1.0)
    tuning = Tuning(buffer_wait_seconds=30.0)
    async with chain(
        tmp_path, limits=limits, tuning=tuning, buffer_max_seconds=1.0, drain_timeout_seconds=2
    ) as c:
        await add_fault(c.emulator, {"kind": "withhold_acks"})
        async with speaker(c.srv.ws_url("stuck")) as a:
            assert json.loads(await a.recv())["type"] == "ready"
            await send_all(a, chunks)  # 4 s of audio into a 1 s ledger: the server stops reading
            await asyncio.sleep(0.5)
            async with speaker(c.srv.ws_url("stuck")) as b:
                ending_a = await read_until_closed(a)
                ready = json.loads(await asyncio.wait_for(b.recv(), t(20)))
    assert ending_a.code == 4409 and [e["code"] for e in ending_a.errors] == [4409]
    assert ready["type"] == "ready"


async def test_no_ack_before_kvs_says_persisted(tmp_path: Path) -> None:
    """Acks are tied to PERSISTED: with KVS withholding its acks, nothing is acked, and `stop`
    does not claim success (4503 after the finish bound)."""
    chunks = corpus_chunks()[:8]
    async with chain(
        tmp_path, limits=ServerLimits(finish_timeout=2.0), drain_timeout_seconds=2
    ) as c:
        await add_fault(c.emulator, {"kind": "withhold_acks"})
        async with speaker(c.srv.ws_url("held")) as ws:
            await send_all(ws, chunks, pace=0.05)
            await ws.send(json.dumps({"type": "stop"}))
            ending = await read_until_closed(ws, within=30)
    assert ending.acks == []
    assert ending.code == 4503 and [e["code"] for e in ending.errors] == [4503]


async def test_jwks_token_admits_a_speaker(tmp_path: Path) -> None:
    """AUTH_MODE=jwks end to end: an ES256 token from a real JWKS endpoint opens the session."""
    import time

    import jwt
    from aiohttp import web
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="ES256", use="sig")
    app = web.Application()

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    jwks_url = f"http://127.0.0.1:{runner.addresses[0][1]}/jwks"
    claims = {"session": "idp", "role": "speaker", "exp": int(time.time()) + 300,
              "aud": "kvs-ingest", "iss": "https://idp.example"}  # fmt: skip
    token = jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"})
    try:
        async with chain(
            tmp_path, auth_mode="jwks", jwks_url=jwks_url, jwt_audience="kvs-ingest",
            jwt_issuer="https://idp.example",
        ) as c:  # fmt: skip
            async with speaker(c.srv.ws_url("idp"), token) as ws:
                ready = json.loads(await asyncio.wait_for(ws.recv(), t(30)))
                await ws.send(json.dumps({"type": "stop"}))
                ending = await read_until_closed(ws)
    finally:
        await runner.cleanup()
    assert ready["type"] == "ready" and ending.code == 1000
