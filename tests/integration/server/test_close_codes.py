"""Every close code of DESIGN.md §4.4, provoked for real against a real chain; each arrives
after exactly one JSON `error` with the same code. (1000, 1012, 4409 and the refusals 4401,
4403 are in test_chain.py and test_refusals.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.exceptions import ConnectionClosed

from kvs_ingest.kvs.tuning import Tuning
from kvs_ingest.server.app import ServerLimits

from .chain import add_fault, chain, corpus_chunks
from .conftest import Ending, NoSessions, http_get, read_until_closed, running_server, speaker, t


def closed_with(ending: Ending, code: int) -> None:
    assert ending.code == code, (ending.code, ending.messages)
    assert [e["code"] for e in ending.errors] == [code], ending.messages


async def wait_ready(ws) -> dict:
    msg = json.loads(await asyncio.wait_for(ws.recv(), t(30)))
    assert msg["type"] == "ready", msg
    return msg


async def send_quietly(ws, data: bytes | str) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send(data)


async def test_4408_no_media_within_the_start_timeout(tmp_path: Path) -> None:
    """A socket that sends nothing after opening is closed 4408 at the start timeout."""
    async with chain(tmp_path, start_timeout_seconds=0.5) as c:
        async with speaker(c.srv.ws_url("st")) as ws:
            began = time.monotonic()
            ending = await read_until_closed(ws)
    closed_with(ending, 4408)
    assert time.monotonic() - began < t(10)


async def test_4408_idle_and_keepalive(tmp_path: Path) -> None:
    """Keepalives hold an idle socket open past the idle timeout; silence then closes it 4408."""
    chunks = corpus_chunks()
    async with chain(tmp_path, idle_timeout_seconds=1.0) as c:
        async with speaker(c.srv.ws_url("idle")) as ws:
            await wait_ready(ws)
            await ws.send(chunks[0])
            for _ in range(6):  # 1.8 s of keepalives, longer than the idle timeout
                await asyncio.sleep(0.3)
                await ws.send(json.dumps({"type": "keepalive"}))
            assert ws.close_code is None
            ending = await read_until_closed(ws)
    closed_with(ending, 4408)


async def test_4415_undecodable_media(tmp_path: Path) -> None:
    """Bytes that are no known media close the socket 4415; the server lives on."""
    async with chain(tmp_path) as c:
        async with speaker(c.srv.ws_url("junk")) as ws:
            await wait_ready(ws)
            await send_quietly(ws, b"this is not audio at all; " * 200)
            ending = await read_until_closed(ws)
        status, _, _ = await http_get(c.srv.http + "/healthz")
    closed_with(ending, 4415)
    assert status == 200


async def test_4429_faster_than_real_time(tmp_path: Path) -> None:
    """Four seconds of audio at once against a 1 s burst allowance is 4429."""
    chunks = corpus_chunks()
    async with chain(tmp_path, rate_burst_seconds=1.0, rate_limit_factor=1.0) as c:
        async with speaker(c.srv.ws_url("fast")) as ws:
            await wait_ready(ws)
            for ch in chunks:
                await send_quietly(ws, ch)
            ending = await read_until_closed(ws)
    closed_with(ending, 4429)


async def test_4429_too_many_connections_from_one_client(tmp_path: Path) -> None:
    """Past the per-client connection limit, a new socket from that address is 4429."""
    limits = ServerLimits(max_connections_per_client=1)
    async with chain(tmp_path, limits=limits) as c:
        async with speaker(c.srv.ws_url("pc1")) as first:
            await wait_ready(first)
            # A forged first X-Forwarded-For hop does not make it another client.
            forged = {"X-Forwarded-For": "203.0.113.9, 127.0.0.1"}
            async with speaker(c.srv.ws_url("pc2"), additional_headers=forged) as second:
                ending = await read_until_closed(second)
            assert first.close_code is None
    closed_with(ending, 4429)


async def test_1013_at_capacity_and_readyz_full(tmp_path: Path) -> None:
    """At MAX_CONNECTIONS /readyz says full and a new speaker gets 1013."""
    async with chain(tmp_path, max_connections=1) as c:
        async with speaker(c.srv.ws_url("cap1")) as first:
            await wait_ready(first)
            status, body, _ = await http_get(c.srv.http + "/readyz")
            assert (status, json.loads(body)["reason"]) == (503, "full")
            async with speaker(c.srv.ws_url("cap2")) as second:
                ending = await read_until_closed(second)
        status, _, _ = await http_get(c.srv.http + "/readyz")
    closed_with(ending, 1013)
    assert status == 200


async def test_1009_message_over_max_message_bytes(tmp_path: Path) -> None:
    """A message over MAX_MESSAGE_BYTES gets `error` 1009 and close 1009."""
    async with chain(tmp_path, max_message_bytes=1024) as c:
        async with speaker(c.srv.ws_url("big")) as ws:
            await wait_ready(ws)
            await send_quietly(ws, b"\0" * 2000)
            ending = await read_until_closed(ws)
    closed_with(ending, 1009)


async def test_4400_malformed_control_message(tmp_path: Path) -> None:
    """An unknown control message after the socket opened is 4400."""
    async with chain(tmp_path) as c:
        async with speaker(c.srv.ws_url("bad")) as ws:
            await wait_ready(ws)
            await send_quietly(ws, json.dumps({"type": "dance"}))
            ending = await read_until_closed(ws)
    closed_with(ending, 4400)


async def test_4503_kvs_down_and_buffer_full(tmp_path: Path) -> None:
    """KVS withholds every ack: the 1 s ledger fills, writes wait, then 4503."""
    chunks = corpus_chunks()
    tuning = Tuning(buffer_wait_seconds=1.0)
    async with chain(tmp_path, buffer_max_seconds=1.0, tuning=tuning, drain_timeout_seconds=2) as c:
        await add_fault(c.emulator, {"kind": "withhold_acks"})
        async with speaker(c.srv.ws_url("full")) as ws:
            await wait_ready(ws)
            for ch in chunks:
                await send_quietly(ws, ch)
            ending = await read_until_closed(ws, within=60)
    closed_with(ending, 4503)


async def test_1011_when_tokens_cannot_be_checked() -> None:
    """JWKS endpoint unreachable: a well-formed token cannot be verified → 1011, not 4401."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        {"session": "s", "role": "speaker", "exp": int(time.time()) + 60},
        key, algorithm="RS256", headers={"kid": "k1"},
    )  # fmt: skip
    registry = NoSessions()
    async with running_server(
        registry, auth_mode="jwks", jwks_url="http://127.0.0.1:9/jwks.json"
    ) as srv:
        async with speaker(srv.ws_url("s"), token) as ws:
            ending = await read_until_closed(ws)
    closed_with(ending, 1011)
    assert registry.opened == []


async def test_4503_and_readyz_when_the_control_plane_fails(tmp_path: Path) -> None:
    """KVS's control plane failing: the new session's speaker gets 4503 and /readyz turns 503
    kvs_unavailable; /healthz stays 200."""
    tuning = Tuning(control_attempts=2, backoff_base=0.01, backoff_cap=0.05)
    async with chain(tmp_path, tuning=tuning) as c:
        await add_fault(c.emulator, {"kind": "fail", "api": "DescribeStream", "count": 50})
        async with speaker(c.srv.ws_url("nokvs")) as ws:
            ending = await read_until_closed(ws)
        ready, body, _ = await http_get(c.srv.http + "/readyz")
        live, _, _ = await http_get(c.srv.http + "/healthz")
    closed_with(ending, 4503)
    assert (ready, json.loads(body)["reason"], live) == (503, "kvs_unavailable", 200)
