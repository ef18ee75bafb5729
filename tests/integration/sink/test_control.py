"""Control plane, endpoint cache, registry and SigV4 against the emulator."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from kvs_ingest.kvs.control import FrozenCredentials
from kvs_ingest.kvs.errors import PutMediaRefused
from kvs_ingest.kvs.fragments import FragmentWriter, connection_header
from kvs_ingest.kvs.putmedia import PutMediaConnection

from .conftest import Sink, StartSink, eventually, pcm_ramp, t


async def fifty_sockets(sink: Sink, sessions: list[str], seconds: float) -> None:
    """25 concurrent speakers per session, each writing `seconds` of PCM and finishing."""

    async def one(session_id: str, seed: int) -> None:
        _, speaker = await sink.speaker(session_id)
        pcm = pcm_ramp(seconds, seed)
        for i in range(0, len(pcm), 8000):
            await speaker.write(pcm[i : i + 8000])
        assert await speaker.finish(t(30))
        speaker.detach()

    await asyncio.gather(*(one(sessions[i % 2], i) for i in range(50)))


async def test_endpoints_fetched_once_per_stream_and_again_after_failure(
    start_sink: StartSink,
) -> None:
    """50 sockets on 2 streams: one GetDataEndpoint per stream; a moved endpoint: one more each."""
    async with start_sink(session_grace_seconds=0.3) as sink:
        await fifty_sockets(sink, ["cache-a", "cache-b"], 0.5)
        stats = await sink.stats()
        assert stats["calls"]["GetDataEndpoint"] == {"session-cache-a": 1, "session-cache-b": 1}
        assert stats["calls"]["CreateStream"] == {"session-cache-a": 1, "session-cache-b": 1}

        async def connections_ended() -> bool:
            return all(s.uploader.state == "waiting" for s in sink.registry._sessions.values())

        await eventually(connections_ended, 10)
        await sink.fault({"kind": "move_endpoint"})
        await fifty_sockets(sink, ["cache-a", "cache-b"], 0.5)
        stats = await sink.stats()
    assert stats["calls"]["GetDataEndpoint"] == {"session-cache-a": 2, "session-cache-b": 2}


async def test_concurrent_opens_create_the_stream_once(start_sink: StartSink) -> None:
    """20 sockets racing to open one new session get one Session and cause one CreateStream."""
    async with start_sink() as sink:
        sessions = await asyncio.gather(*(sink.registry.open("race") for _ in range(20)))
        stats = await sink.stats()
    assert len({id(s) for s in sessions}) == 1
    assert stats["calls"]["CreateStream"] == {"session-race": 1}


async def test_throttling_and_5xx_are_retried(start_sink: StartSink) -> None:
    """Throttled GetDataEndpoint and 500s on DescribeStream are retried with back-off."""
    async with start_sink() as sink:
        await sink.fault({"kind": "throttle", "api": "GetDataEndpoint", "count": 2})
        await sink.fault({"kind": "fail", "api": "DescribeStream", "count": 2, "status": 500})
        _, speaker = await sink.speaker("retry")
        await speaker.write(pcm_ramp(1.5))
        assert await speaker.finish(t(20))
        stats = await sink.stats()
    assert stats["calls"]["GetDataEndpoint"]["session-retry"] == 3
    assert stats["calls"]["DescribeStream"]["session-retry"] >= 3
    assert sink.registry.healthy


async def test_control_plane_down_is_kvs_unavailable(start_sink: StartSink) -> None:
    """DescribeStream failing past the retries makes open() raise KvsUnavailable; not healthy."""
    from kvs_ingest.sessions import KvsUnavailable

    async with start_sink() as sink:
        await sink.fault({"kind": "fail", "api": "DescribeStream", "count": 50, "status": 503})
        with pytest.raises(KvsUnavailable):
            await sink.registry.open("down")
        assert not sink.registry.healthy


async def test_warm_up_builds_the_clients_without_a_request(start_sink: StartSink) -> None:
    """`serve` warms the control plane up before it listens (botocore builds a client in
    40-100 ms of CPU, which would otherwise stall the loop inside the first sessions): it
    sends no request, so a KVS that is down cannot stop the service from starting."""
    from kvs_ingest.config import load_settings
    from kvs_ingest.kvs.control import make_kvs

    async with start_sink() as sink:
        await sink.kvs.warm_up()
        stats = await sink.stats()
    assert not any(stats["calls"].values()), stats["calls"]
    nothing_listens = load_settings(kvs_backend="endpoint", kvs_endpoint_url="http://127.0.0.1:9")
    async with make_kvs(nothing_listens) as kvs:
        await asyncio.wait_for(kvs.warm_up(), t(10))


async def put_once(sink: Sink, credentials: FrozenCredentials, stream: str) -> list[str]:
    """One tiny PutMedia with the given keys; the ack event types it got."""
    await sink.kvs.ensure_stream(stream)
    endpoint = await sink.kvs.data_endpoint(stream)
    writer = FragmentWriter("sig", start_ms=int(time.time() * 1000))
    data = connection_header(b"0123456789abcdef") + b"".join(
        p.data for p in writer.write(pcm_ramp(0.5)) + writer.close()
    )

    async def body():  # type: ignore[no-untyped-def]
        yield data

    acks: list[str] = []
    async with aiohttp.ClientSession() as http:
        conn = PutMediaConnection(
            http,
            endpoint=endpoint,
            stream_name=stream,
            credentials=credentials,
            region=sink.kvs.region,
            start_timestamp=time.time(),
        )
        await asyncio.wait_for(conn.run(body(), lambda e: acks.append(e.type.value)), t(20))
    return acks


async def test_sigv4_accepted_with_the_right_keys(start_sink: StartSink) -> None:
    """The emulator's signature check accepts our PutMedia signed with the configured keys."""
    async with start_sink() as sink:
        acks = await put_once(sink, await sink.kvs.credentials(), "sig-good")
    assert "PERSISTED" in acks


async def test_sigv4_rejected_with_wrong_keys(start_sink: StartSink) -> None:
    """The same request signed with a wrong secret is refused with 403 before any ack."""
    async with start_sink() as sink:
        wrong = FrozenCredentials("test", "not-the-secret", None, None)
        with pytest.raises(PutMediaRefused) as caught:
            await put_once(sink, wrong, "sig-bad")
    assert caught.value.status == 403
