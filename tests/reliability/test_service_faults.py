"""Faults of the service itself: SIGTERM and SIGKILL mid-stream, event-loop lag under load."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import numpy as np

from .conftest import ServiceProc, audit, record, recording, sampling, speak, stack, t, token

STREAM = "session-{}"


async def _until_sent(n: int) -> tuple[asyncio.Event, object]:
    event = asyncio.Event()

    def on_sent(i: int) -> None:
        if i + 1 >= n:
            event.set()

    return event, on_sent


async def test_sigterm_mid_stream_drain_persists_everything(tmp_path: Path) -> None:
    """SIGTERM while a real-time speaker streams: it gets 1012, the process exits 0, every
    sample it sent is in KVS; it reconnects to a new process and the session continues after
    an explicit gap, sample-exact."""
    first, second = recording(16, 100), recording(6, 101)
    async with stack(tmp_path) as stk:
        sent8, on_sent = await _until_sent(24)
        task = asyncio.create_task(
            speak(
                stk.service.ws_url("term"), token("term"), first.chunks, speed=1.0, on_sent=on_sent
            )  # type: ignore[arg-type]
        )
        await asyncio.wait_for(sent8.wait(), 60)
        signalled = time.monotonic()
        stk.service.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        out = await asyncio.wait_for(task, 120)
        code = await stk.service.signal(signal.SIGTERM)
        drained = time.monotonic() - signalled
        stk.service = ServiceProc(stk.service.env)
        await stk.service.start()
        out2 = await speak(stk.service.ws_url("term"), token("term"), second.chunks, speed=2.0)
        part1 = first.decode_prefix(out.sent)
        a = await audit(stk.emulator.url, STREAM.format("term"), [part1, second.ours])
    record(
        "svc-sigterm",
        "SIGTERM mid-stream: 1012, drain persists all sent, exit 0",
        **a.figures(),
        drain_s=round(drained, 2),
        sent_chunks=out.sent,
    )
    assert out.close_code == 1012, (out.close_code, out.errors)
    assert [e["code"] for e in out.errors] == [1012]
    assert code == 0
    assert out.sent < len(first.chunks)
    assert out2.close_code == 1000, out2.errors
    # another process: what the killed one held is not to be counted on (resend after the ack)
    assert out.ready and out2.ready and out2.ready["instance"] != out.ready["instance"]
    assert a.clean, a
    assert len(a.gaps) == 1  # the reconnect, and nowhere else


async def test_sigkill_mid_stream_loss_bounded_by_acks(tmp_path: Path) -> None:
    """SIGKILL while a real-time speaker streams: what KVS holds is an exact prefix of what it
    sent, at least everything acked; the speaker resends from its last ack to a new process
    and the session holds the whole recording, nothing missing, sample-exact per part."""
    first = recording(16, 110)
    async with stack(tmp_path) as stk:
        sent, on_sent = await _until_sent(32)
        task = asyncio.create_task(
            speak(
                stk.service.ws_url("kill"), token("kill"), first.chunks, speed=1.0, on_sent=on_sent
            )  # type: ignore[arg-type]
        )
        await asyncio.wait_for(sent.wait(), 60)
        code = await stk.service.signal(signal.SIGKILL)
        out = await asyncio.wait_for(task, 60)
        acked = first.acked[out.last_seq] if out.acks else 0
        # The client resends the audio after its last ack as a new recording.
        rest_seconds = (len(first.ours) - acked) / 16_000
        second = recording(round(rest_seconds, 4), 110, offset=acked * 3)
        stk.service = ServiceProc(stk.service.env)
        await stk.service.start()
        out2 = await speak(stk.service.ws_url("kill"), token("kill"), second.chunks, speed=2.0)
        probe = await audit(stk.emulator.url, STREAM.format("kill"), [])
        kept = probe.got_samples - len(second.ours)
        a = await audit(stk.emulator.url, STREAM.format("kill"), [first.ours[:kept], second.ours])
    sent_samples = len(first.decode_prefix(out.sent))
    record(
        "svc-sigkill",
        "SIGKILL: loss bounded by unacked; resend from last ack restores all",
        **a.figures(),
        acked_s=round(acked / 16_000, 2),
        unacked_at_kill_s=round((sent_samples - acked) / 16_000, 2),
        persisted_unacked_s=round((kept - acked) / 16_000, 2),
    )
    assert code == -signal.SIGKILL
    assert out.close_code == 1006, out.close_code
    assert out.acks, "no ack before the kill"
    assert acked <= kept <= sent_samples, (acked, kept, sent_samples)
    assert out2.close_code == 1000, out2.errors
    # another process: what the killed one held is not to be counted on (resend after the ack)
    assert out.ready and out2.ready and out2.ready["instance"] != out.ready["instance"]
    assert a.clean, a


def _probes_over(before: dict[str, float], after: dict[str, float], le: str) -> float:
    """Lag probes taken between two scrapes that fell in the histogram bucket `le`."""
    key = f'kvs_ingest_event_loop_lag_probe_seconds_bucket{{le="{le}"}}'
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_event_loop_never_blocked_over_50ms_under_load(tmp_path: Path) -> None:
    """20 speakers at 4x real time: the service's own event-loop lag probe never reads over
    50 ms, /healthz answers throughout, and every session audits sample-exact."""
    rec = recording(12, 120)
    speakers = 20
    async with stack(tmp_path) as stk:
        rtts: list[float] = []

        async def probe_healthz() -> None:
            import aiohttp

            async with aiohttp.ClientSession() as http:
                while True:
                    began = time.monotonic()
                    async with http.get(stk.service.http + "/healthz") as resp:
                        assert resp.status == 200
                    rtts.append(time.monotonic() - began)
                    await asyncio.sleep(0.05)

        prober = asyncio.create_task(probe_healthz())
        before = await stk.service.metrics()
        async with sampling(stk.service, interval=0.1) as series:
            outs = await asyncio.gather(
                *(
                    speak(stk.service.ws_url(f"load-{i}"), token(f"load-{i}"), rec.chunks, speed=4)
                    for i in range(speakers)
                )
            )
        prober.cancel()
        after = await stk.service.metrics()
        audits = [
            await audit(stk.emulator.url, STREAM.format(f"load-{i}"), [rec.ours])
            for i in range(speakers)
        ]
    lag = max(series["lag"], default=0.0)
    # Every probe of the run (10 a second), from the histogram: how many, how many over 50 ms.
    probes = _probes_over(before, after, "+Inf")
    over_50ms = probes - _probes_over(before, after, "0.05")
    record(
        "svc-loop-lag",
        "event loop never blocked > 50 ms under load (20 speakers at 4x)",
        samples_lost=sum(a.lost for a in audits),
        samples_duplicated=sum(a.duplicated for a in audits),
        max_loop_lag_ms=round(lag * 1000, 1),
        lag_probes=int(probes),
        probes_over_50ms=int(over_50ms),
        healthz_p99_ms=round(float(np.percentile(rtts, 99)) * 1000, 1) if rtts else None,
        peak_rss_mb=round(max(series["rss"], default=0) / 2**20, 1),
    )
    assert all(o.close_code == 1000 for o in outs), [o.close_code for o in outs]
    assert probes >= 20, probes  # 10 a second over the ~3 s run
    assert lag < t(0.050), lag  # KVS_INGEST_TEST_TIME_FACTOR only for a machine known loaded
    if t(1) <= 1:  # every probe, not only the sampled ones
        assert over_50ms == 0, (over_50ms, probes)
    assert all(a.clean for a in audits), [a for a in audits if not a.clean][:1]


async def test_new_process_continues_a_session_that_ran_ahead(tmp_path: Path) -> None:
    """A speaker uses its rate-limit burst (12 s of audio in 3 s, default limits), the process
    is replaced (SIGTERM, new process) and the speaker comes back: the new process must place
    the audio after what the stream already holds, so nothing is refused as out of order."""
    first, second = recording(12, 130), recording(6, 131)
    limits = {"rate_limit_factor": 1.25, "rate_burst_seconds": 10}
    async with stack(tmp_path, **limits) as stk:
        out = await speak(stk.service.ws_url("ahead"), token("ahead"), first.chunks, speed=4)
        code = await stk.service.signal(signal.SIGTERM)
        stk.service = ServiceProc(stk.service.env)
        await stk.service.start()
        out2 = await speak(stk.service.ws_url("ahead"), token("ahead"), second.chunks, speed=1)
        stats = await stk.emulator.stats()
        a = await audit(stk.emulator.url, STREAM.format("ahead"), [first.ours, second.ours])
    record(
        "svc-restart-ran-ahead",
        "new process after a burst: audio after what is stored",
        **a.figures(),
        ack_errors=stats.get("ack_errors"),
        second_close=out2.close_code,
    )
    assert out.close_code == 1000, out.errors
    assert code == 0
    assert out2.close_code == 1000, (out2.close_code, out2.errors)
    assert a.clean, a
