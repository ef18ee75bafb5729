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
