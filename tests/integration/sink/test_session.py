"""Session behaviour against the emulator: back-pressure, idle, grace, durability feedback."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from prometheus_client import REGISTRY

from kvs_ingest.sessions import BufferFull

from .conftest import FAST, StartSink, eventually, feed, pcm_ramp, t


async def test_full_buffer_blocks_then_raises_buffer_full(start_sink: StartSink) -> None:
    """With KVS refusing connections, writes stop at BUFFER_MAX_SECONDS and then BufferFull."""
    tuning = dataclasses.replace(FAST, buffer_wait_seconds=1.0)
    gauge_before = REGISTRY.get_sample_value("kvs_ingest_buffered_seconds")
    async with start_sink(tuning=tuning, buffer_max_seconds=2.0) as sink:
        await sink.fault({"kind": "refuse_connections", "seconds": 60})
        session, speaker = await sink.speaker("full")
        loop = asyncio.get_running_loop()
        with pytest.raises(BufferFull) as caught:
            await feed(speaker, pcm_ramp(10))
        blocked_at = speaker.samples_written
        assert caught.value.close_code == 4503
        assert 2 * 16000 <= blocked_at <= 3 * 16000
        assert session.uploader.ledger.buffered_seconds <= 3.0
        # KVS comes back: everything accepted so far is persisted.
        await sink.clear_faults()
        started = loop.time()
        assert await speaker.finish(t(20))
        assert loop.time() - started < t(20)
        # The gauge /metrics shows is back where it was, exactly (a reliability test waits for 0).
        assert REGISTRY.get_sample_value("kvs_ingest_buffered_seconds") == gauge_before
        back = await sink.read_back("session-full")
    assert back.pcm == pcm_ramp(10)[: blocked_at * 2]


async def test_idle_speaker_gets_its_last_fragment_persisted(start_sink: StartSink) -> None:
    """Audio that stops mid-fragment is closed within the idle bound and PERSISTED, no finish()."""
    async with start_sink() as sink:
        _, speaker = await sink.speaker("idle")
        pcm = pcm_ramp(1.5)
        await speaker.write(pcm[:32000])  # one whole fragment
        await speaker.write(pcm[32000:])  # half of the next, then silence

        async def all_persisted() -> bool:
            return speaker.samples_persisted == 24000

        await eventually(all_persisted, 1.0 + 5)
    assert sink.persisted["idle"] == [16000, 24000]


async def test_grace_ends_the_connection_and_a_new_speaker_reopens_it(
    start_sink: StartSink,
) -> None:
    """No speaker for the grace period ends PutMedia cleanly; the next speaker reconnects and
    continues the timeline after a gap."""
    async with start_sink(session_grace_seconds=0.5) as sink:
        session, one = await sink.speaker("grace")
        await one.write(pcm_ramp(1.0, seed=1))
        assert await one.finish(t(10))
        one.detach()

        async def ended() -> bool:
            return session.uploader.state == "waiting"

        await eventually(ended, 10)
        ahead = (session.end_ms - time.time_ns() // 1_000_000) / 1000
        await asyncio.sleep(max(0.0, ahead) + 0.5)  # the audio came faster than real time
        _, two = await sink.speaker("grace")
        await two.write(pcm_ramp(1.0, seed=2))
        assert await two.finish(t(10))
        stats = await sink.stats()
        back = await sink.read_back("session-grace")
    assert stats["putmedia_connections"]["session-grace"] == 2
    assert back.pcm == pcm_ramp(1.0, seed=1) + pcm_ramp(1.0, seed=2)
    assert back.timecodes[1] >= back.timecodes[0] + 1000 + 400  # an explicit gap


async def test_on_persisted_follows_persisted_acks_only(start_sink: StartSink) -> None:
    """With acks delayed 1 s, nothing is reported before PERSISTED; counts only grow."""
    async with start_sink() as sink:
        await sink.fault({"kind": "delay_acks", "seconds": 1.0})
        _, speaker = await sink.speaker("durable")
        await feed(speaker, pcm_ramp(3))
        await asyncio.sleep(0.5)
        assert sink.persisted["durable"] == []
        assert await speaker.finish(t(20))
    counts = sink.persisted["durable"]
    assert counts == sorted(set(counts)) and counts[-1] == 48000


async def test_registry_close_flushes_every_session(start_sink: StartSink) -> None:
    """close() with open fragments in 3 sessions persists them all before returning."""
    async with start_sink() as sink:
        speakers = []
        for name in ("shut-a", "shut-b", "shut-c"):
            _, speaker = await sink.speaker(name)
            await speaker.write(pcm_ramp(1.3))
            speakers.append(speaker)
        await sink.registry.close(t(20))
        assert [s.samples_persisted for s in speakers] == [20800] * 3
        assert len(sink.registry) == 0
        back = await sink.read_back("session-shut-b")
    assert back.pcm == pcm_ramp(1.3)


async def test_reaped_session_reopens_after_its_old_end(start_sink: StartSink) -> None:
    """A session let go after the grace period comes back as a new Session whose timeline
    starts after the old one's end, even when that end is ahead of the wall clock."""
    async with start_sink(session_grace_seconds=0.2) as sink:
        first, one = await sink.speaker("reaped")
        await feed(one, pcm_ramp(8, seed=1))  # 8 s of audio in a moment: the end is ahead
        assert await one.finish(t(20))
        one.detach()
        old_end = first.end_ms

        async def reaped() -> bool:
            return sink.registry.get("reaped") is None

        await eventually(reaped, 10)
        second, two = await sink.speaker("reaped")
        await two.write(pcm_ramp(1.0, seed=2))
        assert await two.finish(t(20))
        back = await sink.read_back("session-reaped")
        stats = await sink.stats()
    assert second is not first
    assert back.timecodes[8] >= old_end
    assert back.pcm == pcm_ramp(8, seed=1) + pcm_ramp(1.0, seed=2)
    assert not stats["ack_errors"]


async def test_second_socket_while_one_streams_leaves_no_gap(start_sink: StartSink) -> None:
    """A speaker attaching while another is attached continues the audio without a gap."""
    async with start_sink() as sink:
        session, one = await sink.speaker("overlap")
        await one.write(pcm_ramp(0.5, seed=1))
        await asyncio.sleep(1.0)  # the wall clock moves past what was written
        end = session.end_ms
        _, two = await sink.speaker("overlap")
        assert session.end_ms == end
        one.detach()
        await two.write(pcm_ramp(0.5, seed=2))
        assert await two.finish(t(20))
        back = await sink.read_back("session-overlap")
    assert back.pcm == pcm_ramp(0.5, seed=1) + pcm_ramp(0.5, seed=2)
    assert back.block_times[-1] - back.block_times[0] < 1000
