"""Replays the recorded traffic of AWS's official C producer (shared/kvs-producer-c-capture) over
raw HTTP against the emulator: its signatures must verify and its bodies be acked as recorded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from kvs_ingest.emulator import Emulator

from .conftest import StartEmulator
from .kvsclient import AckParser, client, scaled

CAPTURE = Path(__file__).resolve().parents[4] / "shared" / "kvs-producer-c-capture"
KEY = "AKIDHELDOUTFAKE00001"
SECRET = "heldoutFakeSecretKey0000000000000000000"
SCENARIOS = {
    "clean": (CAPTURE, []),
    "describe-not-found": (CAPTURE / "faults" / "describe-not-found", []),
    "drop-connection": (CAPTURE / "faults" / "drop-connection", [{"kind": "drop_after", "fragments": 1}]),
    "error-ack-4004": (CAPTURE / "faults" / "error-ack-4004", [{"kind": "error_ack", "fragment": 2, "error_id": 4004}]),
    "error-ack-5000": (CAPTURE / "faults" / "error-ack-5000", [{"kind": "error_ack", "fragment": 2, "error_id": 5000}]),
    "error-ack-5000-keep-open": (CAPTURE / "faults" / "error-ack-5000-keep-open", [{"kind": "error_ack", "fragment": 2, "error_id": 5000, "keep_open": True}]),
    "no-eofr-ack": (CAPTURE / "faults" / "no-eofr-ack", []),
}  # fmt: skip

pytestmark = pytest.mark.skipif(not CAPTURE.is_dir(), reason="capture not available")


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    return (await reader.readuntil(b"\r\n"))[:-2]


async def raw_request(
    port: int,
    call: dict[str, Any],
    body: bytes | None,
    chunks: list[int] | None,
    *,
    close_after_acks: int = 0,
) -> tuple[int, dict[str, str], list[dict[str, Any]], str]:
    """Send one recorded request verbatim (headers as recorded, Host without a port included);
    return status, headers, the JSON objects of the response body, and how it ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{call['method']} {call['path']} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in call["headers"]) + "\r\n"
    writer.write(head.encode("latin-1"))
    enough_acks = asyncio.Event()

    async def send_body() -> None:
        try:
            if chunks is None:
                writer.write(body or b"")
            else:
                pos = 0
                assert body is not None
                for size in chunks:
                    writer.write(b"%x\r\n%s\r\n" % (size, body[pos : pos + size]))
                    pos += size
                    await writer.drain()
                if call.get("end_reason") == "terminating chunk":
                    writer.write(b"0\r\n\r\n")
                elif call.get("end_reason", "").startswith("client closed"):
                    # recorded: the client went away without ending the body
                    await asyncio.wait_for(enough_acks.wait(), scaled(10))
                    writer.close()
            await writer.drain()
        except ConnectionError:
            pass  # the emulator ended the request (after an ERROR or a drop)

    sender = asyncio.create_task(send_body())
    status_line = await _read_line(reader)
    while b" 100 " in status_line + b" ":
        while await _read_line(reader):
            pass
        status_line = await _read_line(reader)
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while line := await _read_line(reader):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    parser = AckParser()
    objects: list[dict[str, Any]] = []
    ended = "eof"
    try:
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await _read_line(reader)).split(b";")[0], 16)
                if size == 0:
                    break
                objects += parser.feed(await reader.readexactly(size))
                await _read_line(reader)
                if close_after_acks and len(objects) >= close_after_acks:
                    enough_acks.set()
        else:
            objects += parser.feed(await reader.readexactly(int(headers["content-length"])))
    except (asyncio.IncompleteReadError, ConnectionError):
        ended = "dropped"
    await asyncio.wait_for(sender, scaled(10))
    writer.close()
    return status, headers, objects, ended


def _recorded_acks(call: dict[str, Any]) -> list[tuple[str, int, int | None]]:
    return [
        (a["ack"]["EventType"], a["ack"]["FragmentTimecode"], a["ack"].get("ErrorId"))
        for a in call.get("acks", [])
        if "ack" in a
    ]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_replay_recorded_producer(start_emulator: StartEmulator, scenario: str) -> None:
    """The C producer's recorded requests verify and its bodies get the recorded acks."""
    folder, faults = SCENARIOS[scenario]
    emulator: Emulator = await start_emulator(
        access_key=KEY,
        secret_key=SECRET,
        clock_skew_seconds=None,  # the capture is dated the day it was recorded
        # the stand-in the SDK was recorded against checked timecodes per connection only
        timecode_check="connection",
    )
    calls = [json.loads(p.read_text()) for p in sorted(folder.glob("[0-9][0-9][0-9]-*.json"))]
    if calls[0]["response"]["status"] == 200:  # the recording starts with an existing stream
        kvs = client("kinesisvideo", emulator.url, key=KEY, secret=SECRET)
        await asyncio.to_thread(kvs.create_stream, StreamName="heldout-capture")
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for fault in faults:
            async with session.post(f"{emulator.url}/_emulator/faults", json=fault) as r:
                assert r.status == 200
    persisted: list[str] = []
    for call in calls:
        if call["op"] == "putMedia":
            body = (folder / call["body_file"]).read_bytes()
            sizes = [size for _, size in call["chunks"]]
            assert sum(sizes) == len(body)
            status, _, acks, _ = await asyncio.wait_for(
                raw_request(
                    emulator.port, call, body, sizes, close_after_acks=len(_recorded_acks(call)) + 2
                ),
                scaled(30),
            )
            assert status == 200
            got = [(a["EventType"], a.get("FragmentTimecode"), a.get("ErrorId")) for a in acks]
            persisted += [a["FragmentNumber"] for a in acks if a["EventType"] == "PERSISTED"]
            want = _recorded_acks(call)
            if scenario == "no-eofr-ack":
                # the stand-in withheld the last fragment's acks; KVS (and the emulator) ack it
                # when the producer's END_OF_FRAGMENT tag arrives
                assert got[: len(want)] == want
                assert [g[0] for g in got[len(want) :]] == ["RECEIVED", "PERSISTED"]
            else:
                assert got == want
            numbers = {}
            for ack in acks:
                numbers.setdefault(ack["FragmentTimecode"], set()).add(ack["FragmentNumber"])
            assert all(n.isdigit() and len(n) > 20 for ns in numbers.values() for n in ns)
        else:
            body = call["body_text"].encode()
            status, _, answer, _ = await raw_request(emulator.port, call, body, None)
            assert status == call["response"]["status"], answer
            if status == 200 and call["op"] == "getDataEndpoint":
                assert answer[0]["DataEndpoint"] == emulator.url
    stats = emulator.stats.to_json()
    assert stats["calls_total"]["PutMedia"] == sum(c["op"] == "putMedia" for c in calls)
    stored = [f.number for f in emulator.store.streams["heldout-capture"].fragments]
    assert stored == persisted  # exactly what was acked PERSISTED is stored
