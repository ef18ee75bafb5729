"""Each fault of the injection API, and each KVS rule the emulator enforces, observed from the
client side: ack streams, HTTP refusals, boto3 errors."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

from kvs_ingest.emulator import Emulator
from kvs_ingest.mkv import writer as w

from .conftest import StartEmulator
from .kvsclient import client, put_media, scaled, signed_putmedia_headers, stored
from .media import sine, writer_chunks


async def fault(emulator: Emulator, spec: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{emulator.url}/_emulator/faults", json=spec) as response:
            assert response.status == 200, await response.text()
            return await response.json()  # type: ignore[no-any-return]


async def create(emulator: Emulator, name: str) -> None:
    await asyncio.to_thread(client("kinesisvideo", emulator.url).create_stream, StreamName=name)


def t0() -> int:
    return int(time.time() * 1000) - 60_000


def kinds(result: Any) -> list[str]:
    return [a["EventType"] for a in result.acks]


async def test_fault_api_lists_and_clears(emulator: Emulator) -> None:
    """Faults are listed by GET, cleared by DELETE, and a bad one is refused with 400."""
    await fault(emulator, {"kind": "delay_acks", "seconds": 1, "stream": "x"})
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{emulator.url}/_emulator/faults") as r:
            assert [f["kind"] for f in (await r.json())["faults"]] == ["delay_acks"]
        async with session.post(f"{emulator.url}/_emulator/faults", json={"kind": "nope"}) as r:
            assert r.status == 400
        async with session.delete(f"{emulator.url}/_emulator/faults") as r:
            assert (await r.json())["faults"] == []


async def test_drop_after(emulator: Emulator) -> None:
    """The connection is dropped right after the N-th fragment's PERSISTED ack."""
    await create(emulator, "d")
    await fault(emulator, {"kind": "drop_after", "fragments": 2, "stream": "d"})
    result = await put_media(emulator.url, "d", writer_chunks(t0(), sine(4.0)))
    assert result.ended == "dropped"
    assert kinds(result) == ["BUFFERING", "RECEIVED", "PERSISTED"] * 2
    again = await put_media(emulator.url, "d", writer_chunks(t0() + 10_000, sine(1.0)))
    assert again.ended == "eof" and len(again.of("PERSISTED")) == 1  # the fault was used up


async def test_drop_after_zero(emulator: Emulator) -> None:
    """drop_after 0 cuts the next connection before any ack."""
    await create(emulator, "d0")
    await fault(emulator, {"kind": "drop_after", "fragments": 0})
    result = await put_media(emulator.url, "d0", writer_chunks(t0(), sine(1.0)))
    assert (result.status, result.ended, result.acks) == (200, "dropped", [])


async def test_error_ack(emulator: Emulator) -> None:
    """The N-th fragment gets ERROR with the given id, is not stored, and the response ends."""
    await create(emulator, "e")
    await fault(emulator, {"kind": "error_ack", "fragment": 2, "error_id": 5001})
    start = t0()
    result = await put_media(emulator.url, "e", writer_chunks(start, sine(3.0)))
    assert result.ended == "eof"
    assert kinds(result) == ["BUFFERING", "RECEIVED", "PERSISTED", "BUFFERING", "ERROR",
                             "BUFFERING"]  # fmt: skip
    error = result.of("ERROR")[0]
    assert (error["ErrorId"], error["FragmentTimecode"]) == (5001, start + 1000)
    assert emulator.stats.to_json()["fragments_persisted"] == {"e": 1}


async def test_delay_acks(emulator: Emulator) -> None:
    """With delay_acks, no ack arrives before the delay has passed."""
    await create(emulator, "dl")
    delay = scaled(1.5)
    await fault(emulator, {"kind": "delay_acks", "seconds": delay})
    sent = time.monotonic()
    first_ack: list[float] = []
    hold = asyncio.Event()

    async def watch() -> None:
        await stored(emulator, "dl", 1)
        first_ack.append(time.monotonic())

    watcher = asyncio.create_task(watch())
    chunks = writer_chunks(t0(), sine(1.0), end_of_fragment=True)
    result = await put_media(emulator.url, "dl", chunks, hold_open=hold, stop_after_acks=3)
    await watcher
    elapsed = time.monotonic() - sent
    assert first_ack[0] - sent < delay  # persisted early...
    assert elapsed >= delay * 0.9  # ...but acked only after the delay
    assert kinds(result) == ["BUFFERING", "RECEIVED", "PERSISTED"]


async def test_withhold_acks(emulator: Emulator) -> None:
    """withhold_acks: no ack at all, the connection stays open, fragments are still stored."""
    await create(emulator, "wh")
    await fault(emulator, {"kind": "withhold_acks", "stream": "wh"})
    hold = asyncio.Event()
    chunks = writer_chunks(t0(), sine(2.0), end_of_fragment=True)
    task = asyncio.create_task(put_media(emulator.url, "wh", chunks, hold_open=hold))
    await stored(emulator, "wh", 2)
    await asyncio.sleep(0.3)  # time for acks that must not come
    assert not task.done()
    hold.set()
    result = await asyncio.wait_for(task, scaled(10))
    assert result.status == 200 and result.acks == []


async def test_refuse_connections(emulator: Emulator) -> None:
    """New PutMedia requests get 503 for T seconds, then are accepted again."""
    await create(emulator, "r")
    await fault(emulator, {"kind": "refuse_connections", "seconds": scaled(1.0)})
    refused = await put_media(emulator.url, "r", writer_chunks(t0(), sine(1.0)))
    assert (refused.status, refused.error_type) == (503, "ServiceUnavailableException")
    await asyncio.sleep(scaled(1.1))  # the refusal lasts a given time: nothing to await
    accepted = await put_media(emulator.url, "r", writer_chunks(t0(), sine(1.0)))
    assert accepted.status == 200 and len(accepted.of("PERSISTED")) == 1


async def test_throttle_and_fail(emulator: Emulator) -> None:
    """throttle/fail answer exactly the next N calls of one API, then it works again."""
    await create(emulator, "t")
    await fault(emulator, {"kind": "throttle", "api": "GetDataEndpoint", "count": 2})
    await fault(emulator, {"kind": "fail", "api": "DescribeStream", "count": 1, "status": 500})
    kvs = client("kinesisvideo", emulator.url)

    def run() -> list[str]:
        seen = []
        for _ in range(3):
            try:
                kvs.get_data_endpoint(StreamName="t", APIName="PUT_MEDIA")
                seen.append("ok")
            except ClientError as exc:
                seen.append(exc.response["Error"]["Code"])
        for _ in range(2):
            try:
                kvs.describe_stream(StreamName="t")
                seen.append("ok")
            except ClientError as exc:
                status = exc.response["ResponseMetadata"]["HTTPStatusCode"]
                seen.append(f"{exc.response['Error']['Code']}/{status}")
        return seen

    assert await asyncio.to_thread(run) == [
        "ClientLimitExceededException",
        "ClientLimitExceededException",
        "ok",
        "InternalFailure/500",
        "ok",
    ]


async def test_slow_active(emulator: Emulator) -> None:
    """With slow_active, a new stream stays CREATING and refuses PutMedia until T passes."""
    await fault(emulator, {"kind": "slow_active", "seconds": scaled(1.0)})
    await create(emulator, "slow")
    kvs = client("kinesisvideo", emulator.url)
    info = await asyncio.to_thread(kvs.describe_stream, StreamName="slow")
    assert info["StreamInfo"]["Status"] == "CREATING"
    early = await put_media(emulator.url, "slow", writer_chunks(t0(), sine(1.0)))
    assert (early.status, early.error_type) == (404, "ResourceNotFoundException")
    await asyncio.sleep(scaled(1.1))
    info = await asyncio.to_thread(kvs.describe_stream, StreamName="slow")
    assert info["StreamInfo"]["Status"] == "ACTIVE"


async def test_max_connection_seconds(emulator: Emulator) -> None:
    """A connection older than the limit gets ERROR 4003 and the response ends."""
    await create(emulator, "m")
    await fault(emulator, {"kind": "max_connection_seconds", "seconds": scaled(0.5)})
    hold = asyncio.Event()
    result = await asyncio.wait_for(
        put_media(emulator.url, "m", writer_chunks(t0(), sine(1.0)), hold_open=hold),
        scaled(10),
    )
    hold.set()
    assert result.ended == "eof"
    assert result.acks[-1]["EventType"] == "ERROR" and result.acks[-1]["ErrorId"] == 4003


async def test_move_endpoint(emulator: Emulator) -> None:
    """After move_endpoint the old URL refuses PutMedia (InvalidEndpoint), the new one works."""
    await create(emulator, "mv")
    kvs = client("kinesisvideo", emulator.url)
    old = (await asyncio.to_thread(kvs.get_data_endpoint, StreamName="mv", APIName="PUT_MEDIA"))[
        "DataEndpoint"
    ]
    await fault(emulator, {"kind": "move_endpoint"})
    new = (await asyncio.to_thread(kvs.get_data_endpoint, StreamName="mv", APIName="PUT_MEDIA"))[
        "DataEndpoint"
    ]
    assert new != old
    refused = await put_media(old, "mv", writer_chunks(t0(), sine(1.0)))
    assert (refused.status, refused.error_type) == (400, "InvalidEndpointException")
    accepted = await put_media(new, "mv", writer_chunks(t0(), sine(1.0)))
    assert accepted.status == 200 and len(accepted.of("PERSISTED")) == 1


async def test_second_connection_and_call_rate(emulator: Emulator) -> None:
    """A 2nd concurrent PutMedia gets ConnectionLimitExceeded; > 5 calls/s ClientLimitExceeded."""
    await create(emulator, "c")
    hold, opened = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(
        put_media(emulator.url, "c", writer_chunks(t0(), sine(1.0)), hold_open=hold, opened=opened)
    )
    await asyncio.wait_for(opened.wait(), scaled(10))
    second = await put_media(emulator.url, "c", writer_chunks(t0(), sine(1.0)))
    assert (second.status, second.error_type) == (400, "ConnectionLimitExceededException")
    hold.set()
    assert (await first).status == 200
    statuses = []
    for _ in range(5):
        statuses.append((await put_media(emulator.url, "c", [w.ebml_header()])).error_type)
    assert "ClientLimitExceededException" in statuses


@pytest.mark.parametrize(
    ("name", "body", "error_id"),
    [
        ("garbage", [b"\x00\x01\x02\x03not mkv at all"], 4006),
        ("two-segments", [w.ebml_header(), w.segment_header(), w.ebml_header()], 4006),
        (
            "backwards",
            [*writer_chunks(10_000, sine(1.0)), w.cluster_header(5_000),
             w.simple_block(1, 0, sine(0.2))],
            4004,
        ),
        ("too-long", [*writer_chunks(10_000, b"")[:1], w.cluster_header(10_000),
                      w.simple_block(1, 0, sine(0.1)), w.simple_block(1, 11_000, sine(0.1))],
         4002),
        ("unknown-track", [*writer_chunks(10_000, b"")[:1], w.cluster_header(10_000),
                           w.simple_block(2, 0, sine(0.1))], 4010),
        ("track-without-frames", [w.ebml_header() + w.segment_header() + w.info(b"u" * 16)
                                  + w.tracks(w.AudioTrack(), w.AudioTrack(number=2, uid=2)),
                                  w.cluster_header(10_000), w.simple_block(1, 0, sine(0.1)),
                                  w.cluster_header(11_000)], 4011),
        ("too-many-tracks", [w.ebml_header() + w.segment_header() + w.info(b"u" * 16)
                             + w.tracks(*(w.AudioTrack(number=n, uid=n) for n in range(1, 5)))],
         4012),
        ("too-many-tags", [*writer_chunks(10_000, b"")[:1],
                           w.tags([(f"t{i}", "v") for i in range(11)]),
                           w.cluster_header(10_000), w.simple_block(1, 0, sine(0.1))], 4009),
    ],
)  # fmt: skip
async def test_kvs_rules(emulator: Emulator, name: str, body: list[bytes], error_id: int) -> None:
    """Each broken KVS rule gets an ERROR ack with AWS's error id, then the response ends."""
    await create(emulator, name)
    result = await put_media(emulator.url, name, body)
    assert result.status == 200 and result.ended == "eof"
    errors = result.of("ERROR")
    assert [e["ErrorId"] for e in errors] == [error_id], result.acks
    assert all(isinstance(a["FragmentTimecode"], int) for a in result.acks)


async def test_fragment_size_limit(start_emulator: StartEmulator) -> None:
    """A fragment over the size limit gets ERROR 4001."""
    emulator = await start_emulator(max_fragment_bytes=20_000)
    await create(emulator, "big")
    result = await put_media(emulator.url, "big", writer_chunks(t0(), sine(1.0)))
    assert [e["ErrorId"] for e in result.of("ERROR")] == [4001]


async def test_timecode_must_pass_stored_fragments(emulator: Emulator) -> None:
    """Re-sending an already stored fragment on a new connection gets 4004 (stream timeline)."""
    await create(emulator, "again")
    start = t0()
    first = await put_media(emulator.url, "again", writer_chunks(start, sine(2.0)))
    assert len(first.of("PERSISTED")) == 2
    again = await put_media(emulator.url, "again", writer_chunks(start + 1000, sine(1.0)))
    assert [e["ErrorId"] for e in again.of("ERROR")] == [4004]


async def test_idle_acks_then_timeout(start_emulator: StartEmulator) -> None:
    """While nothing arrives, IDLE acks are sent; after the idle timeout the response ends."""
    emulator = await start_emulator(idle_ack_seconds=0.2, idle_timeout_seconds=scaled(1.0))
    await create(emulator, "idle")
    hold = asyncio.Event()
    result = await asyncio.wait_for(
        put_media(emulator.url, "idle", [writer_chunks(t0(), b"")[0]], hold_open=hold),
        scaled(10),
    )
    hold.set()
    assert result.ended == "eof"
    assert kinds(result) and set(kinds(result)) == {"IDLE"}


async def test_stream_deleted_while_writing(emulator: Emulator) -> None:
    """A fragment completed after its stream was deleted gets ERROR 4008."""
    await create(emulator, "gone")
    kvs = client("kinesisvideo", emulator.url)
    arn = (await asyncio.to_thread(kvs.describe_stream, StreamName="gone"))["StreamInfo"][
        "StreamARN"
    ]
    hold, opened = asyncio.Event(), asyncio.Event()
    chunks = writer_chunks(t0(), sine(1.0))
    task = asyncio.create_task(
        put_media(emulator.url, "gone", chunks, hold_open=hold, opened=opened)
    )
    await asyncio.wait_for(opened.wait(), scaled(10))
    await asyncio.to_thread(kvs.delete_stream, StreamARN=arn)
    hold.set()
    result = await asyncio.wait_for(task, scaled(10))
    assert [e["ErrorId"] for e in result.of("ERROR")] == [4008]


async def test_stats_count_calls_per_stream(emulator: Emulator) -> None:
    """GET /_emulator/stats counts calls per API and per stream, connections and fragments."""
    await create(emulator, "s1")
    await create(emulator, "s2")
    kvs = client("kinesisvideo", emulator.url)
    for name in ("s1", "s2", "s2"):
        await asyncio.to_thread(kvs.get_data_endpoint, StreamName=name, APIName="PUT_MEDIA")
    await put_media(emulator.url, "s1", writer_chunks(t0(), sine(2.0)))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{emulator.url}/_emulator/stats") as r:
            stats = await r.json()
    assert stats["calls"]["GetDataEndpoint"] == {"s1": 1, "s2": 2}
    assert stats["calls"]["CreateStream"] == {"s1": 1, "s2": 1}
    assert stats["putmedia_connections"] == {"s1": 1}
    assert stats["fragments_persisted"] == {"s1": 2}


async def test_putmedia_refusals_before_acks(emulator: Emulator) -> None:
    """PutMedia with a wrong secret, to an unknown stream, or without headers gets AWS's errors."""
    await create(emulator, "p")
    chunks = writer_chunks(t0(), sine(1.0))
    bad_secret = await put_media(emulator.url, "p", chunks, secret="wrong")
    assert (bad_secret.status, bad_secret.error_type) == (403, "InvalidSignatureException")
    assert "signature" in bad_secret.acks[0]["message"]
    unknown = await put_media(emulator.url, "missing", chunks)
    assert (unknown.status, unknown.error_type) == (404, "ResourceNotFoundException")
    headers = signed_putmedia_headers(emulator.url, "p", timecode_type="SOMETIMES")
    bad_header = await put_media(emulator.url, "p", chunks, headers=headers)
    assert (bad_header.status, bad_header.error_type) == (400, "InvalidArgumentException")
