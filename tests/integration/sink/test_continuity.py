"""Timeline continuity across processes: a session continued by a new registry (a restarted or
another task) after the previous one's timeline ran ahead of the wall clock. Two registries, two
control-plane clients, one emulator; read back with boto3."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from kvs_ingest.kvs.control import make_kvs
from kvs_ingest.sessions import SessionRegistry

from .conftest import FAST, Sink, StartSink, feed, pcm_ramp, t


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@asynccontextmanager
async def another_process(sink: Sink, **tuning: object) -> AsyncIterator[SessionRegistry]:
    """A second registry with its own control-plane client on the same emulator."""
    async with make_kvs(sink.settings, tuning=dataclasses.replace(FAST, **tuning)) as kvs:
        registry = SessionRegistry(sink.settings, kvs)
        try:
            yield registry
        finally:
            await registry.close(t(10))


async def run_ahead(sink: Sink, session_id: str, seconds: float) -> int:
    """The first process writes `seconds` of audio at once and lets go; returns how far its
    timeline ended ahead of the wall clock (ms)."""
    session, speaker = await sink.speaker(session_id)
    await feed(speaker, pcm_ramp(seconds, seed=1))
    assert await speaker.finish(t(30))
    ahead = session.end_ms - wall_ms()
    speaker.detach()
    await sink.registry.close(t(10))
    return ahead


async def continue_in(registry: SessionRegistry, session_id: str, seconds: float) -> list[int]:
    """The second process continues the session; returns its speaker's on_persisted calls."""
    session = await registry.open(session_id)
    calls: list[int] = []
    speaker = session.attach(calls.append)
    await feed(speaker, pcm_ramp(seconds, seed=2))
    assert await speaker.finish(t(30))
    assert speaker.samples_persisted == speaker.samples_written == int(seconds * 16000)
    return calls


def assert_continuous(back_times: list[int], timecodes: list[int]) -> None:
    assert timecodes == sorted(set(timecodes)), "cluster timecodes must strictly increase"
    assert back_times == sorted(set(back_times)), "block times must strictly increase"


async def test_new_process_continues_after_what_kvs_stores(start_sink: StartSink) -> None:
    """The first process ran ~10 s ahead; the second learns the stored end (ListFragments) and
    places its audio after it: nothing refused, nothing lost, timecodes strictly increase."""
    async with start_sink() as sink:
        ahead = await run_ahead(sink, "ahead", 12)
        assert ahead > 5_000, ahead  # the scenario: the stream's end is well past the wall clock
        first_end = (await sink.read_back("session-ahead")).block_times[-1] + 40
        async with another_process(sink) as registry:
            calls = await continue_in(registry, "ahead", 3)
        stats = await sink.stats()
        back = await sink.read_back("session-ahead")
    assert stats["ack_errors"] == {}, stats["ack_errors"]
    assert back.pcm == pcm_ramp(12, seed=1) + pcm_ramp(3, seed=2)
    assert_continuous(back.block_times, back.timecodes)
    assert back.block_times[12 * 25] == first_end  # continues right after what KVS held
    assert calls[-1] == 3 * 16000


async def deny_list_fragments(sink: Sink, count: int) -> None:
    """The next `count` ListFragments calls fail 403 (a task role without the permission)."""
    await sink.fault(
        {
            "kind": "fail",
            "api": "ListFragments",
            "count": count,
            "status": 403,
            "error": "AccessDeniedException",
        }
    )


async def test_first_send_refused_as_out_of_order_is_retimed_not_lost(
    start_sink: StartSink,
) -> None:
    """ListFragments denied when the session opens (wall-clock fallback): KVS refuses the first
    fragment with 4004; it is never counted as stored but re-timed past KVS's end and sent
    again, and the speaker's acks advance only once it is really PERSISTED."""
    async with start_sink() as sink:
        await run_ahead(sink, "net", 12)
        await deny_list_fragments(sink, 1)
        async with another_process(sink) as registry:
            calls = await continue_in(registry, "net", 3)
            session = registry.get("net")
            retimed = session.uploader.retimed_ms if session is not None else None
        stats = await sink.stats()
        back = await sink.read_back("session-net")
    assert back.pcm == pcm_ramp(12, seed=1) + pcm_ramp(3, seed=2)
    assert_continuous(back.block_times, back.timecodes)
    assert stats["ack_errors"] == {"4004": 1}, stats["ack_errors"]  # once, then re-timed
    assert retimed is None or retimed > 0
    assert calls == sorted(calls) and calls[-1] == 3 * 16000


async def test_retime_steps_forward_when_the_end_cannot_be_learned(start_sink: StartSink) -> None:
    """ListFragments denied throughout: the refused fragments step forward by a growing bound
    until KVS takes them; an explicit gap, nothing lost, nothing out of order."""
    async with start_sink() as sink:
        await run_ahead(sink, "step", 12)
        await deny_list_fragments(sink, 50)
        async with another_process(sink, retime_step_ms=3_000) as registry:
            await continue_in(registry, "step", 2)
        await sink.clear_faults()
        back = await sink.read_back("session-step")
    assert back.pcm == pcm_ramp(12, seed=1) + pcm_ramp(2, seed=2)
    assert_continuous(back.block_times, back.timecodes)


async def test_first_speaker_placed_when_the_session_was_opened(start_sink: StartSink) -> None:
    """A new stream takes a while to become ACTIVE; the first speaker's audio is placed at the
    time the session was opened, not after the wait (so it does not run ahead of the wall
    clock by the wait)."""
    async with start_sink(emulator={"active_delay_seconds": 1.5}) as sink:
        before = wall_ms()
        session, speaker = await sink.speaker("anchor")
        after = wall_ms()
        await speaker.write(pcm_ramp(1))
        assert await speaker.finish(t(20))
        back = await sink.read_back("session-anchor")
    assert after - before >= 1_400  # the ACTIVE wait happened
    assert before <= back.timecodes[0] <= before + 300, back.timecodes[0] - before
    assert session.end_ms == back.timecodes[0] + 1000
