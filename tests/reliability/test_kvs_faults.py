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
        a = await audit(stk.emulator.url, STREAM.format("base"), [rec.ours],
                        ffmpeg_segments=[rec.ffmpeg])  # fmt: skip
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
        a = await audit(stk.emulator.url, STREAM.format("drop"), [rec.ours],
                        ffmpeg_segments=[rec.ffmpeg])  # fmt: skip
    assert out.close_code == 1000, out.errors
    assert stats["putmedia_connections"].get("session-drop", 0) >= 3, stats
    assert a.clean, a
    record("kvs-drop-after", "connection dropped after N fragments: reconnect and resend",
           **a.figures(), connections=stats["putmedia_connections"]["session-drop"],
           session_s=round(took, 2))  # fmt: skip


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
            *(run_speaker(stk, f"err-{e}", 16, seed=10 + i, speed=4) for i, e in enumerate(RETRYABLE))
        )
        stats = await stk.emulator.stats()
        audits = [
            await audit(stk.emulator.url, STREAM.format(f"err-{e}"), [rec.ours],
                        ffmpeg_segments=[rec.ffmpeg])  # fmt: skip
            for e, (rec, _) in zip(RETRYABLE, runs, strict=True)
        ]
    for e, (rec, out), a in zip(RETRYABLE, runs, audits, strict=True):
        assert out.close_code == 1000, (e, out.errors)
        assert out.last_seq == len(rec.chunks) - 1, e
        assert a.clean, (e, a)
    errored = stats["fragments_errored"]
    for e in RETRYABLE[:3]:
        assert errored.get(STREAM.format(f"err-{e}"), 0) >= 2, (e, stats)
    record("kvs-error-acks", "ERROR ack 4000/5000/5001 and 4003: fragment re-sent, none lost",
           samples_lost=sum(a.lost for a in audits),
           samples_duplicated=sum(a.duplicated for a in audits),
           sessions=len(audits), errors_injected=2 * len(RETRYABLE),
           timecodes_backwards=sum(a.backwards for a in audits))  # fmt: skip


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
    record("kvs-acks-withheld", "stale connection (no acks) detected and replaced, none lost",
           **a.figures(), stale_detected_s=round(stale_after, 1), recovery_s=round(recovery, 1),
           max_buffered_s=max(series["buffered"], default=None))  # fmt: skip


async def test_acks_slow(tmp_path: Path) -> None:
    """Every ack 3 s late: acks to the speaker come late but nothing is lost or re-sent twice."""
    async with stack(tmp_path) as stk:
        await stk.emulator.fault({"kind": "delay_acks", "seconds": 3})
        async with sampling(stk.service) as series:
            rec, out = await run_speaker(stk, "slowack", 16, seed=30, speed=2)
        a = await audit(stk.emulator.url, STREAM.format("slowack"), [rec.ours],
                        ffmpeg_segments=[rec.ffmpeg])  # fmt: skip
    assert out.close_code == 1000, out.errors
    assert a.clean, a
    record("kvs-acks-slow", "acks 3 s late: everything persisted once",
           **a.figures(), max_buffered_s=max(series["buffered"], default=None))  # fmt: skip
