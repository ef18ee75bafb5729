"""The sink end to end against the emulator: samples in == samples fetched, under every fault."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from .conftest import FAST, ReadBack, Sink, StartSink, eventually, feed, pcm_ramp, t


def metric(name: str, **labels: str) -> float:
    """A value from the process-wide Prometheus registry (what /metrics serves)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def assert_exact(back: ReadBack, pcm: bytes) -> None:
    """Every sample once, in order; timecodes strictly increasing across the session."""
    assert len(back.pcm) == len(pcm)
    assert back.pcm == pcm
    assert all(a < b for a, b in zip(back.timecodes, back.timecodes[1:], strict=False))
    assert all(a < b for a, b in zip(back.block_times, back.block_times[1:], strict=False))


async def run_session(sink: Sink, session_id: str, pcm: bytes, pace: float = 0.0) -> ReadBack:
    _, speaker = await sink.speaker(session_id)
    await feed(speaker, pcm, pace=pace)
    assert await speaker.finish(t(30)), "not everything PERSISTED in time"
    assert speaker.samples_persisted == len(pcm) // 2
    assert sink.persisted[session_id][-1] == len(pcm) // 2
    return await sink.read_back(sink.settings.stream_name(session_id))


async def test_sixty_seconds_make_sixty_fragments_on_one_connection(start_sink: StartSink) -> None:
    """60 s of PCM -> 60 fragments of 1 s over one PutMedia connection; read-back is exact."""
    pcm = pcm_ramp(60)
    before = metric("kvs_ingest_fragments_persisted_total")
    connects = metric("kvs_ingest_putmedia_connects_total", outcome="ok")
    async with start_sink() as sink:
        back = await run_session(sink, "sixty", pcm)
        stats = await sink.stats()
    assert metric("kvs_ingest_fragments_persisted_total") - before == 60
    assert metric("kvs_ingest_putmedia_connects_total", outcome="ok") - connects == 1
    assert_exact(back, pcm)
    assert back.lengths == [1000] * 60
    assert stats["putmedia_connections"]["session-sixty"] == 1
    assert stats["fragments_persisted"]["session-sixty"] == 60
    assert not stats["fragments_errored"] and not stats["ack_errors"]  # strict checks passed
    assert [b - a for a, b in zip(back.timecodes, back.timecodes[1:], strict=False)] == [1000] * 59


FAULTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("drop_after", {"kind": "drop_after", "fragments": 3}, {}),
    ("error_ack_5000", {"kind": "error_ack", "fragment": 3, "error_id": 5000}, {}),
    ("error_ack_5001_keep_open",
     {"kind": "error_ack", "fragment": 2, "error_id": 5001, "keep_open": True}, {}),
    ("delay_acks", {"kind": "delay_acks", "seconds": 0.5}, {}),
    ("refuse_connections", {"kind": "refuse_connections", "seconds": 1.5}, {}),
    ("max_connection_seconds", {"kind": "max_connection_seconds", "seconds": 0.7}, {}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fault", "settings"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_exact_samples_under_fault(
    start_sink: StartSink, name: str, fault: dict[str, Any], settings: dict[str, Any]
) -> None:
    """Under the fault, the fetched samples are exactly those written, once each, in order."""
    pcm = pcm_ramp(8, seed=hash(name) % 100)
    async with start_sink(**settings) as sink:
        await sink.fault(fault)
        # ~5x real time: the session outlives the short faults and the 0.7 s connection limit.
        back = await run_session(sink, name.replace("_", "-"), pcm, pace=0.05)
        stats = await sink.stats()
    assert_exact(back, pcm)
    stream = f"session-{name.replace('_', '-')}"
    if name != "delay_acks":
        assert stats["calls"]["PutMedia"][stream] >= 2, stats


async def test_withheld_acks_make_the_connection_stale(start_sink: StartSink) -> None:
    """No acks at all: after the ack timeout the sink reconnects and re-sends; nothing is lost."""
    pcm = pcm_ramp(5, seed=3)
    async with start_sink() as sink:
        await sink.fault({"kind": "withhold_acks"})
        _, speaker = await sink.speaker("withheld")
        await feed(speaker, pcm)

        async def reconnected() -> bool:
            stats = await sink.stats()
            return stats["putmedia_connections"].get("session-withheld", 0) >= 2

        await eventually(reconnected, 20)
        await sink.clear_faults()
        assert await speaker.finish(t(30))
        back = await sink.read_back("session-withheld")
    assert_exact(back, pcm)


async def test_a_quiet_speaker_is_not_mistaken_for_a_stale_connection(
    start_sink: StartSink,
) -> None:
    """A speaker silent for longer than the ack timeout, whose next fragment's acks are slow,
    keeps its PutMedia connection: staleness counts from the write, not from the last ack."""
    pcm = pcm_ramp(2, seed=8)
    async with start_sink() as sink:
        _, speaker = await sink.speaker("quiet")
        await speaker.write(pcm[:32000])  # one whole fragment

        async def first_persisted() -> bool:
            return speaker.samples_persisted == 16000

        await eventually(first_persisted, 10)
        await asyncio.sleep(FAST.ack_timeout + 0.5)  # the speaker is muted
        await sink.fault({"kind": "delay_acks", "seconds": 0.6})
        await speaker.write(pcm[32000:])
        assert await speaker.finish(t(10))
        stats = await sink.stats()
        back = await sink.read_back("session-quiet")
    assert_exact(back, pcm)
    assert stats["putmedia_connections"]["session-quiet"] == 1, stats


async def test_slow_active_stream_is_waited_for(start_sink: StartSink) -> None:
    """A stream that stays CREATING for 1.5 s is waited for; the audio arrives whole."""
    pcm = pcm_ramp(3, seed=4)
    async with start_sink() as sink:
        await sink.fault({"kind": "slow_active", "seconds": 1.5})
        loop = asyncio.get_running_loop()
        started = loop.time()
        back = await run_session(sink, "slow", pcm)
        assert loop.time() - started >= 1.5
        stats = await sink.stats()
    assert_exact(back, pcm)
    assert stats["calls_total"]["CreateStream"] == 1


async def test_rotation_loses_and_duplicates_nothing(start_sink: StartSink) -> None:
    """With PUTMEDIA_ROTATE_SECONDS=0.6 the sink rotates at fragment boundaries; exact audio."""
    pcm = pcm_ramp(6, seed=5)
    async with start_sink(putmedia_rotate_seconds=0.6) as sink:
        _, speaker = await sink.speaker("rotate")
        for i in range(0, len(pcm), 8000):  # ~4x real time, so rotation comes mid-session
            await speaker.write(pcm[i : i + 8000])
            await asyncio.sleep(0.06)
        assert await speaker.finish(t(30))
        back = await sink.read_back("session-rotate")
        stats = await sink.stats()
    assert_exact(back, pcm)
    assert stats["putmedia_connections"]["session-rotate"] >= 2
    assert stats.get("ack_errors", {}) == {} or "4004" not in stats["ack_errors"]


async def test_connection_rotates_before_credentials_expire(start_sink: StartSink) -> None:
    """Credentials expiring 1 s after the rotation margin make the sink rotate at a fragment
    boundary with fresh credentials; nothing lost or repeated."""
    from kvs_ingest.kvs.control import FrozenCredentials

    tuning = dataclasses.replace(FAST, credential_margin_seconds=60.0)
    pcm = pcm_ramp(6, seed=9)
    async with start_sink(tuning=tuning) as sink:
        fetched: list[float] = []

        async def short_lived() -> FrozenCredentials:
            fetched.append(time.time())
            return FrozenCredentials("test", "test", None, time.time() + 60.0 + 0.7)

        sink.kvs.credentials = short_lived  # type: ignore[method-assign]
        back = await run_session(sink, "expiring", pcm, pace=0.06)
        stats = await sink.stats()
    assert_exact(back, pcm)
    assert stats["putmedia_connections"]["session-expiring"] >= 2
    assert len(fetched) == stats["calls"]["PutMedia"]["session-expiring"]
