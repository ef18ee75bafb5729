"""KVS faults injected through the emulator's fault API; every session ends with the audit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from .conftest import Stack, audit, record, recording, sampling, speak, stack, token, wait_for

STREAM = "session-{}"


async def run_speaker(stk: Stack, session: str, seconds: float, *, seed: int = 0, speed=20.0):
    rec = recording(seconds, seed)
    out = await speak(stk.service.ws_url(session), token(session), rec.chunks, speed=speed)
    return rec, out


async def test_baseline_clean_session(tmp_path: Path) -> None:
    """No fault: a 20 s recording sent at 20x is acked to the last chunk and lands sample-exact."""
    async with stack(tmp_path) as stk:
        rec, out = await run_speaker(stk, "base", 20)
        a = await audit(
            stk.emulator.url, STREAM.format("base"), [rec.ours], ffmpeg_segments=[rec.ffmpeg]
        )
    assert out.close_code == 1000, out.errors
    assert out.last_seq == len(rec.chunks) - 1
    assert a.clean, a
    record("kvs-00-baseline", "no fault: every sample once, in order", **a.figures())


async def test_connection_dropped_after_n_fragments(tmp_path: Path) -> None:
    """The emulator drops PutMedia after 3 fragments (twice): reconnect, resend, nothing lost."""
    async with stack(tmp_path) as stk:
        await stk.emulator.fault({"kind": "drop_after", "fragments": 3})
        await stk.emulator.fault({"kind": "drop_after", "fragments": 5})
        started = time.monotonic()
        rec, out = await run_speaker(stk, "drop", 20, seed=1, speed=4)
        took = time.monotonic() - started
        stats = await stk.emulator.stats()
        a = await audit(
            stk.emulator.url, STREAM.format("drop"), [rec.ours], ffmpeg_segments=[rec.ffmpeg]
        )
    assert out.close_code == 1000, out.errors
    assert stats["putmedia_connections"].get("session-drop", 0) >= 3, stats
    assert a.clean, a
    record(
        "kvs-drop-after",
        "connection dropped after N fragments: reconnect and resend",
        **a.figures(),
        connections=stats["putmedia_connections"]["session-drop"],
        session_s=round(took, 2),
    )


RETRYABLE = (4000, 5000, 5001, 4003)


async def test_error_acks_of_each_retryable_id(tmp_path: Path) -> None:
    """An ERROR ack of each retryable id (4000, 5000, 5001) and 4003 mid-session, one session
    per id side by side: the fragment is re-sent and every session audits clean."""
    async with stack(tmp_path) as stk:
        for i, error_id in enumerate(RETRYABLE):
            stream = STREAM.format(f"err-{error_id}")
            await stk.emulator.fault(
                {"kind": "error_ack", "fragment": 3, "error_id": error_id, "stream": stream}
            )
            await stk.emulator.fault(
                {"kind": "error_ack", "fragment": 7 + i, "error_id": error_id, "stream": stream}
            )
        runs = await asyncio.gather(
            *(
                run_speaker(stk, f"err-{e}", 16, seed=10 + i, speed=4)
                for i, e in enumerate(RETRYABLE)
            )
        )
        stats = await stk.emulator.stats()
        audits = [
            await audit(
                stk.emulator.url,
                STREAM.format(f"err-{e}"),
                [rec.ours],
                ffmpeg_segments=[rec.ffmpeg],
            )
            for e, (rec, _) in zip(RETRYABLE, runs, strict=True)
        ]
    for e, (rec, out), a in zip(RETRYABLE, runs, audits, strict=True):
        assert out.close_code == 1000, (e, out.errors)
        assert out.last_seq == len(rec.chunks) - 1, e
        assert a.clean, (e, a)
    errored = stats["fragments_errored"]
    for e in RETRYABLE[:3]:
        assert errored.get(STREAM.format(f"err-{e}"), 0) >= 2, (e, stats)
    record(
        "kvs-error-acks",
        "ERROR ack 4000/5000/5001 and 4003: fragment re-sent, none lost",
        samples_lost=sum(a.lost for a in audits),
        samples_duplicated=sum(a.duplicated for a in audits),
        sessions=len(audits),
        errors_injected=2 * len(RETRYABLE),
        timecodes_backwards=sum(a.backwards for a in audits),
    )


async def test_acks_withheld_stale_connection_replaced(tmp_path: Path) -> None:
    """KVS takes fragments but sends no acks: the connection is found stale and replaced, and
    once acks flow again every sample is persisted exactly once."""
    stream = STREAM.format("stale")
    async with stack(tmp_path) as stk:
        await stk.emulator.fault({"kind": "withhold_acks", "stream": stream})
        task = asyncio.create_task(run_speaker(stk, "stale", 20, seed=20, speed=2))
        withheld = time.monotonic()

        async def replaced() -> bool:
            return (await stk.emulator.stats())["putmedia_connections"].get(stream, 0) >= 2

        async with sampling(stk.service) as series:
            stale_after = await wait_for(replaced, 90, "a second PutMedia connection")
            await stk.emulator.clear_faults()
            rec, out = await asyncio.wait_for(task, 180)
        recovery = time.monotonic() - withheld - stale_after
        a = await audit(stk.emulator.url, stream, [rec.ours], ffmpeg_segments=[rec.ffmpeg])
    assert out.close_code == 1000, out.errors
    assert a.clean, a
    record(
        "kvs-acks-withheld",
        "stale connection (no acks) detected and replaced, none lost",
        **a.figures(),
        stale_detected_s=round(stale_after, 1),
        recovery_s=round(recovery, 1),
        max_buffered_s=max(series["buffered"], default=None),
    )


async def test_acks_slow(tmp_path: Path) -> None:
    """Every ack 1 s late (the emulator delays them one after another): acks to the speaker
    come late but nothing is lost or re-sent twice."""
    async with stack(tmp_path) as stk:
        await stk.emulator.fault({"kind": "delay_acks", "seconds": 1.0})
        async with sampling(stk.service) as series:
            rec, out = await run_speaker(stk, "slowack", 8, seed=30, speed=2)
        a = await audit(
            stk.emulator.url, STREAM.format("slowack"), [rec.ours], ffmpeg_segments=[rec.ffmpeg]
        )
    assert out.close_code == 1000, out.errors
    assert a.clean, a
    record(
        "kvs-acks-slow",
        "acks 1 s late: everything persisted once",
        **a.figures(),
        max_buffered_s=max(series["buffered"], default=None),
    )


async def _speaker_with_backlog(stk: Stack, session: str, rec, speed: float):
    """Run a speaker while watching the server's reads: returns (outcome, longest time the
    server read nothing while the speaker kept sending, most bytes sent but not yet read)."""
    sent_bytes = 0
    series: list[tuple[float, int, float]] = []

    def on_sent(i: int) -> None:
        nonlocal sent_bytes
        sent_bytes += len(rec.chunks[i])

    async def poll() -> None:
        while True:
            m = await stk.service.metrics()
            series.append((time.monotonic(), sent_bytes, m.get("kvs_ingest_bytes_in_total", 0.0)))
            await asyncio.sleep(0.2)

    poller = asyncio.create_task(poll())
    try:
        out = await speak(
            stk.service.ws_url(session),
            token(session),
            rec.chunks,
            speed=speed,
            on_sent=on_sent,
            stop_timeout=180,
        )
    finally:
        poller.cancel()
    stall = 0.0
    start: tuple[float, int, float] | None = None
    for point in series:
        if start is None or point[2] != start[2]:
            start = point
        elif point[1] > start[1]:  # the speaker sent more; the server read nothing
            stall = max(stall, point[0] - start[0])
    behind = max((s - r for _, s, r in series), default=0.0)
    return out, stall, behind


async def test_connections_refused_30s_buffer_absorbs(tmp_path: Path) -> None:
    """New PutMedia refused for 30 s from the start: the ledger absorbs it, the server stops
    reading the socket when full (back-pressure), and once KVS returns nothing is lost."""
    stream = STREAM.format("refused")
    rec = recording(90, 40)
    async with stack(tmp_path, buffer_max_seconds=66) as stk:
        await stk.emulator.fault({"kind": "refuse_connections", "seconds": 30, "stream": stream})
        refused_at = time.monotonic()
        async with sampling(stk.service) as series:
            out, stall, behind = await _speaker_with_backlog(stk, "refused", rec, speed=2.5)
        first_ack = min((a for a in out.acks), key=lambda a: a["seq"], default=None)
        took = time.monotonic() - refused_at
        a = await audit(stk.emulator.url, stream, [rec.ours], ffmpeg_segments=[rec.ffmpeg])
    peak = max(series["buffered"], default=0.0)
    record(
        "kvs-refused-30s",
        "PutMedia refused 30 s: buffer absorbs, back-pressure, none lost",
        **a.figures(),
        max_buffered_s=peak,
        read_stall_s=round(stall, 1),
        max_unread_bytes=int(behind),
        session_s=round(took, 1),
        gaps_ms=[g[1] for g in a.gaps],
    )
    assert out.close_code == 1000, out.errors
    assert first_ack is not None
    assert 60 <= peak <= 66 + 2, peak  # the buffer filled up to its bound and not past it
    assert stall >= 1.0, (stall, behind)  # the server stopped reading while the speaker sent
    assert not a.mismatched and a.lost == a.duplicated == 0, a
    assert a.backwards == a.overlaps == 0, a
    assert a.clean, a


async def test_refused_until_buffer_full_gets_4503(tmp_path: Path) -> None:
    """KVS refuses long enough to fill a 10 s buffer: the speaker gets 4503, whose `error` says
    which messages the service holds (`held_seq`). When KVS returns, all of them are in the
    stream, and the speaker resends only the audio after them: the session then holds the
    whole recording, nothing missing, nothing twice."""
    stream = STREAM.format("full")
    rec = recording(60, 50)
    async with stack(tmp_path, buffer_max_seconds=10) as stk:
        fault = await stk.emulator.fault(
            {"kind": "refuse_connections", "seconds": 600, "stream": stream}
        )
        async with sampling(stk.service) as series:
            out = await speak(
                stk.service.ws_url("full"), token("full"), rec.chunks, speed=4, stop_timeout=120
            )
            assert out.close_code == 4503, (out.close_code, out.errors)
            await stk.emulator.clear_faults()
            recovered = time.monotonic()

            async def flushed() -> bool:
                m = await stk.service.metrics()
                return abs(m.get("kvs_ingest_buffered_seconds", 1.0)) < 1e-3  # float residue

            await wait_for(flushed, 120, "the ledger to empty once KVS is back", step=0.25)
            recovery = time.monotonic() - recovered
        got = (await audit(stk.emulator.url, stream, [rec.ours[:0]])).got_samples
        held_seq = out.errors[0]["held_seq"]
        held = rec.acked[held_seq] if held_seq >= 0 else 0
        kept = await audit(
            stk.emulator.url, stream, [rec.ours[:got]], ffmpeg_segments=[rec.ffmpeg[:got]]
        )
        # The speaker follows the table: reconnect, resend what comes after held_seq.
        rest = recording(round((len(rec.ours) - held) / 16_000, 4), 50, offset=held * 3)
        out2 = await speak(stk.service.ws_url("full"), token("full"), rest.chunks, speed=4)
        a = await audit(stk.emulator.url, stream, [rec.ours[:held], rest.ours])
    assert fault["kind"] == "refuse_connections"
    assert [e["code"] for e in out.errors] == [4503]
    assert kept.clean, kept  # what is there is an exact prefix of the recording, no hole, no repeat
    assert got >= 9 * 16_000, got  # the whole buffer's worth was kept (10 s, one fragment slack)
    assert got == held, (got, held, held_seq)  # held_seq told the speaker exactly what was kept
    assert held_seq < out.sent - 1, (held_seq, out.sent)  # some were sent and not held
    assert out2.close_code == 1000, out2.errors
    assert out.ready and out2.ready and out2.ready["instance"] == out.ready["instance"]
    assert a.clean, a  # after the resend: the whole recording, exactly once
    record(
        "kvs-refused-buffer-full",
        "KVS down past the buffer: 4503 says what is held; resending the rest loses and repeats nothing",
        **a.figures(),
        samples_kept=got,
        held_seq=held_seq,
        messages_sent=out.sent,
        recovery_s=round(recovery, 1),
        max_buffered_s=max(series["buffered"], default=None),
    )


async def test_stream_slow_to_become_active(tmp_path: Path) -> None:
    """A new stream stays CREATING for 6 s: the speaker's first audio waits (or is buffered)
    and the whole recording lands sample-exact once the stream is ACTIVE."""
    rec = recording(12, 60)
    async with stack(tmp_path) as stk:
        await stk.emulator.fault({"kind": "slow_active", "seconds": 6})
        started = time.monotonic()
        out = await speak(stk.service.ws_url("slow"), token("slow"), rec.chunks, speed=4)
        took = time.monotonic() - started
        stats = await stk.emulator.stats()
        a = await audit(
            stk.emulator.url, STREAM.format("slow"), [rec.ours], ffmpeg_segments=[rec.ffmpeg]
        )
    assert out.close_code == 1000, out.errors
    assert took >= 6, took  # the stream really was slow
    assert stats["calls_total"].get("DescribeStream", 0) >= 2, stats["calls_total"]
    assert a.clean, a
    record(
        "kvs-slow-active",
        "stream CREATING 6 s: speaker waits, nothing lost",
        **a.figures(),
        session_s=round(took, 1),
        describe_calls=stats["calls_total"].get("DescribeStream"),
    )


async def test_endpoint_moves_cache_refreshed(tmp_path: Path) -> None:
    """Mid-session the data endpoint moves (the old one refuses PutMedia) and the connection
    fails: the service looks the endpoint up again and carries on without loss."""
    stream = STREAM.format("move")
    rec = recording(20, 70)
    async with stack(tmp_path) as stk:
        moved = asyncio.Event()

        def on_sent(i: int) -> None:
            if i == 30 and not moved.is_set():
                moved.set()

        task = asyncio.create_task(
            speak(stk.service.ws_url("move"), token("move"), rec.chunks, speed=4, on_sent=on_sent)
        )
        await asyncio.wait_for(moved.wait(), 60)
        before = (await stk.emulator.stats())["calls"].get("GetDataEndpoint", {}).get(stream, 0)
        await stk.emulator.fault({"kind": "move_endpoint"})
        await stk.emulator.fault({"kind": "error_ack", "fragment": 1, "error_id": 5000})
        out = await asyncio.wait_for(task, 180)
        stats = await stk.emulator.stats()
        a = await audit(stk.emulator.url, stream, [rec.ours], ffmpeg_segments=[rec.ffmpeg])
    after = stats["calls"].get("GetDataEndpoint", {}).get(stream, 0)
    assert out.close_code == 1000, out.errors
    assert after > before, stats["calls"]  # the cached endpoint was looked up again
    assert a.clean, a
    record(
        "kvs-endpoint-moves",
        "endpoint changes: cache refreshed on failure, none lost",
        **a.figures(),
        get_data_endpoint_calls=after,
    )


async def test_emulator_killed_and_restarted(tmp_path: Path) -> None:
    """SIGKILL of the KVS emulator mid-session, restarted 3 s later on the same port and data:
    the service reconnects, re-sends what was not PERSISTED, and the stream is sample-exact."""
    stream = STREAM.format("crash")
    rec = recording(30, 80)
    async with stack(tmp_path) as stk:
        halfway = asyncio.Event()

        def on_sent(i: int) -> None:
            if i == len(rec.chunks) // 2:
                halfway.set()

        task = asyncio.create_task(
            speak(
                stk.service.ws_url("crash"),
                token("crash"),
                rec.chunks,
                speed=2,
                on_sent=on_sent,
                stop_timeout=180,
            )
        )
        await asyncio.wait_for(halfway.wait(), 120)
        await stk.emulator.kill()
        killed = time.monotonic()
        await asyncio.sleep(3)  # KVS is away for a while (the fault itself, not a sync point)
        await stk.emulator.start()
        async with sampling(stk.service) as series:
            out = await asyncio.wait_for(task, 240)
        recovery = time.monotonic() - killed
        a = await audit(stk.emulator.url, stream, [rec.ours], ffmpeg_segments=[rec.ffmpeg])
    assert out.close_code == 1000, out.errors
    assert a.clean, a
    record(
        "kvs-emulator-restart",
        "KVS process killed and restarted: re-send, none lost",
        **a.figures(),
        recovery_s=round(recovery, 1),
        max_buffered_s=max(series["buffered"], default=None),
    )


async def test_putmedia_rotation_ten_minute_session(tmp_path: Path) -> None:
    """A 10-minute recording at high speed against a 3 s maximum PutMedia duration: the
    connection is rotated many times with no gap and no duplicate."""
    stream = STREAM.format("rotate")
    rec = recording(600, 90)
    async with stack(tmp_path, emulator={"max_connection_seconds": 3}) as stk:
        started = time.monotonic()
        out = await speak(
            stk.service.ws_url("rotate"), token("rotate"), rec.chunks, speed=60, stop_timeout=240
        )
        took = time.monotonic() - started
        stats = await stk.emulator.stats()
        a = await audit(stk.emulator.url, stream, [rec.ours], ffmpeg_segments=[rec.ffmpeg])
    connections = stats["putmedia_connections"].get(stream, 0)
    assert out.close_code == 1000, out.errors
    assert connections >= 3, stats
    assert a.clean, a
    record(
        "kvs-rotation-10min",
        "10-min session, 3 s max PutMedia duration: no gap, no dup",
        **a.figures(),
        connections=connections,
        fragments=a.fragments,
        session_s=round(took, 1),
    )
