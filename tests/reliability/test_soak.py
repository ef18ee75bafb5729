"""The soak (`make soak`, never in CI): many real-time speakers with random reconnects while KVS
faults come and go; RSS flat after warm-up, and every session audits sample-exact.

KVS_INGEST_SOAK_SECONDS (1800) and KVS_INGEST_SOAK_SPEAKERS (100) scale it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import audit, record, recording, sampling, speak, stack, token

SOAK_SECONDS = float(os.environ.get("KVS_INGEST_SOAK_SECONDS", "1800"))
SOAK_SPEAKERS = int(os.environ.get("KVS_INGEST_SOAK_SPEAKERS", "100"))
FAULTS = (
    {"kind": "drop_after", "fragments": 5},
    {"kind": "error_ack", "fragment": 20, "error_id": 5000},
    {"kind": "delay_acks", "seconds": 2},
    {"kind": "refuse_connections", "seconds": 10},
    {"kind": "withhold_acks"},
)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 1200)
async def test_soak_speakers_with_reconnects_and_kvs_faults(tmp_path: Path) -> None:
    """SOAK_SPEAKERS real-time speakers for SOAK_SECONDS, each reconnecting with a new recording
    of random length, while a KVS fault is injected every ~45 s: every socket ends 1000, every
    session is sample-exact, and RSS after warm-up stays flat (last third at most 1.15 times the middle third)."""
    pool = [recording(20, 300 + i) for i in range(6)]
    rng = random.Random(7)
    deadline = time.monotonic() + SOAK_SECONDS
    # (recording, chunks sent) per socket; decoded after the run, not on the speakers' loop
    sockets: dict[int, list[tuple[int, int]]] = {i: [] for i in range(SOAK_SPEAKERS)}
    closes: dict[int | None, int] = {}
    faults_injected: list[str] = []

    async with stack(tmp_path) as stk:

        async def speaker(i: int) -> None:
            local = random.Random(i)
            await asyncio.sleep(local.uniform(0, 10))
            while time.monotonic() < deadline:
                k = local.randrange(len(pool))
                rec = pool[k]
                n = local.randint(8, len(rec.chunks))
                out = await speak(
                    stk.service.ws_url(f"soak-{i}"),
                    token(f"soak-{i}"),
                    rec.chunks[:n],
                    speed=1.0,
                    stop_timeout=180,
                    headers={"X-Forwarded-For": f"10.1.{i}.1"},
                )
                closes[out.close_code] = closes.get(out.close_code, 0) + 1
                if out.close_code == 1000:
                    sockets[i].append((k, n))
                else:
                    raise AssertionError(f"speaker {i}: {out.close_code} {out.errors}")
                await asyncio.sleep(local.uniform(0.5, 5))

        async def chaos() -> None:
            while time.monotonic() < deadline - 60:
                await asyncio.sleep(rng.uniform(30, 60))
                fault = rng.choice(FAULTS)
                await stk.emulator.fault(fault)
                faults_injected.append(str(fault["kind"]))
                await asyncio.sleep(25 if fault["kind"] == "withhold_acks" else 12)
                await stk.emulator.clear_faults()

        failure = ""
        async with sampling(stk.service, interval=5.0) as series:
            chaos_task = asyncio.create_task(chaos())
            try:
                await asyncio.gather(*(speaker(i) for i in range(SOAK_SPEAKERS)))
            except AssertionError as exc:
                failure = str(exc)[:300]
            chaos_task.cancel()
            await stk.emulator.clear_faults()
            metrics = await stk.service.metrics()
        audits = []
        if not failure:
            decoded: dict[tuple[int, int], np.ndarray] = {}
            for k, n in {key for keys in sockets.values() for key in keys}:
                decoded[k, n] = pool[k].decode_prefix(n)
            audits = [
                await audit(
                    stk.emulator.url, f"session-soak-{i}", [decoded[key] for key in sockets[i]]
                )
                for i in range(SOAK_SPEAKERS)
            ]
    rss = series["rss"]
    third = max(1, len(rss) // 3)
    warm, late = max(rss[third : 2 * third] or rss), max(rss[-third:])
    record(
        "soak",
        f"{SOAK_SPEAKERS} speakers, {SOAK_SECONDS:.0f} s, reconnects + KVS faults",
        samples_lost=sum(a.lost for a in audits) if audits else None,
        samples_duplicated=sum(a.duplicated for a in audits) if audits else None,
        max_buffered_s=max(series["buffered"], default=None),
        unclean_sessions=sum(not a.clean for a in audits) if audits else None,
        sockets=sum(closes.values()),
        faults=len(faults_injected),
        fault_kinds=sorted(set(faults_injected)),
        rss_mb_after_warmup=round(warm / 2**20, 1),
        rss_mb_end=round(late / 2**20, 1),
        max_loop_lag_ms=round(max(series["lag"], default=0) * 1000, 1),
        ack_4004=metrics.get('kvs_ingest_fragments_errored_total{error_id="4004"}', 0),
        drift_corrected_ms=metrics.get("kvs_ingest_timeline_drift_corrected_ms_total", 0),
        failure=failure or None,
    )
    assert not failure, failure
    assert all(a.clean for a in audits), [a for a in audits if not a.clean][:2]
    assert late <= 1.15 * warm, (warm, late)
