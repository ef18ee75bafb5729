"""Keepalive pings judge the peer, not our own backlog.

A pong travels behind every byte the client sent before it. While the server has not read
those (a flood of tiny messages, or reads stopped by a full ledger), a pong cannot arrive,
however alive the client is; websockets' own keepalive timed it from the ping and closed such
sockets 1011 "keepalive ping timeout" (the intermittent 1011 of the million-message soak). The
server's pong clock now runs only while it waits for the peer with nothing left to read.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import numpy as np

from kvs_ingest.kvs.tuning import Tuning
from kvs_ingest.media import StreamDecoder
from kvs_ingest.server.app import ServerLimits
from tests.rawws import connect_raw, frame, handshake

from .chain import add_fault, chain, corpus_chunks, pcm_of, read_stream
from .conftest import read_until_closed, speaker, t

# Pings far more often and far more impatient than the defaults (20 s, 20 s).
IMPATIENT = ServerLimits(ping_interval=0.2, ping_timeout=0.4)


def pieces(chunks: list[bytes], size: int) -> list[bytes]:
    blob = b"".join(chunks)
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def decoded(chunks: list[bytes]) -> np.ndarray:
    decoder = StreamDecoder("webm")
    parts = [p.data for c in chunks for p in decoder.feed(c)] + [p.data for p in decoder.flush()]
    return np.frombuffer(b"".join(parts), np.int16)


async def test_reads_stopped_by_a_full_ledger_are_not_a_ping_timeout(tmp_path: Path) -> None:
    """KVS withholds acks, the 1 s ledger fills and the socket is not read for 3 s, far past the
    0.4 s ping timeout, with the client's pongs queued behind its unread media: the socket
    ends 4503 (buffer full), as without pings, never 1011."""
    tuning = Tuning(buffer_wait_seconds=3.0)
    async with chain(
        tmp_path, limits=IMPATIENT, buffer_max_seconds=1.0, tuning=tuning, drain_timeout_seconds=2
    ) as c:
        await add_fault(c.emulator, {"kind": "withhold_acks"})
        async with speaker(c.srv.ws_url("stall")) as ws:
            for p in pieces(corpus_chunks(), 100):  # ~640 messages: reading pauses with a queue
                await ws.send(p)
            ending = await read_until_closed(ws, within=60)
    assert ending.code == 4503, (ending.code, ending.reason, ending.messages)
    assert [e["code"] for e in ending.errors] == [4503]


async def test_a_flood_of_tiny_messages_outlasting_the_ping_timeout(tmp_path: Path) -> None:
    """A recording as 3-byte messages (~21 000, longer to work through than the 0.4 s ping
    timeout), then `stop`: 1000, acked to the last message, and KVS holds it sample-exact."""
    chunks = corpus_chunks()
    sent = pieces(chunks, 3)
    async with chain(tmp_path, limits=IMPATIENT) as c:
        async with speaker(c.srv.ws_url("flood")) as ws:
            for i, p in enumerate(sent):
                await ws.send(p)
                if i % 500 == 0:
                    await asyncio.sleep(0)  # the server shares this loop
            await ws.send(json.dumps({"type": "stop"}))
            ending = await read_until_closed(ws, within=120)
        got = pcm_of(await read_stream(c.emulator.url, "session-flood"))
    assert ending.code == 1000, (ending.code, ending.reason, ending.errors)
    assert ending.acks[-1]["seq"] == len(sent) - 1
    assert np.array_equal(got, decoded(chunks)), (len(got), len(decoded(chunks)))


async def test_a_peer_that_never_answers_pings_is_closed_4408(tmp_path: Path) -> None:
    """A raw client that sends media, then neither sends nor answers pings (the idle timeout is
    30 s): the server waits for it, the pong is overdue, and it closes 4408 after an `error`
    4408 within seconds, not 1011."""
    async with chain(tmp_path, limits=IMPATIENT, idle_timeout_seconds=30) as c:
        sock = await raw_speaker(c.srv.server.port or 0, "mute")
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(sock, frame(0x2, corpus_chunks()[0]))
            started = loop.time()
            frames = await read_frames_until_close(sock, t(20))
            took = loop.time() - started
        finally:
            sock.close()
    texts = [json.loads(p) for op, p in frames if op == 0x1]
    closes = [p for op, p in frames if op == 0x8]
    assert closes and int.from_bytes(closes[0][:2], "big") == 4408, frames[-3:]
    assert [m["code"] for m in texts if m["type"] == "error"] == [4408], texts
    assert any(op == 0x9 for op, _ in frames)  # it was pinged
    assert took < t(10), took


# --- a raw client that never answers pings ------------------------------------------------


async def raw_speaker(port: int, session: str) -> socket.socket:
    """A speaker socket past the opening handshake, with no WebSocket library behind it."""
    sock = await connect_raw(port)
    await handshake(sock, port, session, token=None, within=t(20))
    return sock


async def read_frames_until_close(sock: socket.socket, within: float) -> list[tuple[int, bytes]]:
    """Every (unmasked) server frame as (opcode, payload) up to and with the close frame."""
    loop = asyncio.get_running_loop()
    data = b""
    frames: list[tuple[int, bytes]] = []
    async with asyncio.timeout(within):
        while True:
            more = await loop.sock_recv(sock, 65536)
            if not more:
                return frames
            data += more
            while len(data) >= 2:
                opcode, n, start = data[0] & 0x0F, data[1] & 0x7F, 2
                if n == 126:
                    n, start = int.from_bytes(data[2:4], "big"), 4
                elif n == 127:
                    n, start = int.from_bytes(data[2:10], "big"), 10
                if len(data) < start + n:
                    break
                frames.append((opcode, data[start : start + n]))
                data = data[start + n :]
                if opcode == 0x8:
                    return frames
