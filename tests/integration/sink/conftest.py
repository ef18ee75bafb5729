"""The sink against a real emulator on loopback: a registry on it, PCM in, boto3 read-back out.

Read-back goes through boto3 (ListFragments + GetMediaForFragmentList, as a downstream consumer
would) in a worker thread (the emulator shares the test's event loop), and the MKV is parsed with
`kvs_ingest.mkv`, not with the sink's own code.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from kvs_ingest.config import Settings, load_settings
from kvs_ingest.emulator import Emulator, EmulatorConfig
from kvs_ingest.kvs.control import KvsControl, make_kvs
from kvs_ingest.kvs.tuning import Tuning
from kvs_ingest.mkv import ID, EbmlReader, Leaf, parse_block, read_uint
from kvs_ingest.sessions import Session, SessionRegistry, Speaker
from tests.kvsread import list_fragments

TIME_FACTOR = float(os.environ.get("KVS_INGEST_TEST_TIME_FACTOR", "1"))
FAST = Tuning(
    ack_timeout=2.0,
    idle_fragment_seconds=1.0,
    backoff_base=0.05,
    backoff_cap=0.3,
    rotate_drain_seconds=3.0,
    active_timeout=20.0,
    buffer_wait_seconds=5.0,
)


def t(seconds: float) -> float:
    """A timeout scaled for slow machines."""
    return seconds * TIME_FACTOR


def pcm_ramp(seconds: float, seed: int = 0) -> bytes:
    """Distinct samples (a noisy ramp), so a lost, repeated or reordered block shows."""
    n = int(seconds * 16000)
    rng = np.random.default_rng(seed)
    return (np.arange(n) % 20011 + rng.integers(0, 7, n)).astype("<i2").tobytes()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulator's keys through the standard AWS chain (environment variables)."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_KINESIS_VIDEO"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@dataclass
class Sink:
    emulator: Emulator
    settings: Settings
    kvs: KvsControl
    registry: SessionRegistry
    persisted: dict[str, list[int]] = field(default_factory=dict)

    async def speaker(self, session_id: str) -> tuple[Session, Speaker]:
        session = await self.registry.open(session_id)
        calls = self.persisted.setdefault(session_id, [])
        return session, session.attach(calls.append)

    async def fault(self, spec: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.emulator.url + "/_emulator/faults", json=spec) as resp:
                assert resp.status == 200, await resp.text()

    async def clear_faults(self) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.delete(self.emulator.url + "/_emulator/faults") as resp:
                assert resp.status in (200, 204), await resp.text()

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.emulator.url + "/_emulator/stats") as resp:
                assert resp.status == 200
                result: dict[str, Any] = await resp.json()
                return result

    async def read_back(self, stream: str) -> ReadBack:
        return await asyncio.to_thread(read_back, self.emulator.url, stream)


@dataclass
class ReadBack:
    pcm: bytes
    timecodes: list[int]  # Cluster timecodes, in stream order
    block_times: list[int]  # absolute ms of every block, in stream order
    lengths: list[int]  # FragmentLengthInMilliseconds from ListFragments


def read_back(url: str, stream: str) -> ReadBack:
    """ListFragments + GetMediaForFragmentList with boto3, sorted by producer time."""
    am, frags = list_fragments(url, stream)
    frags.sort(key=lambda f: f["ProducerTimestamp"])
    if not frags:
        return ReadBack(b"", [], [], [])
    body = am.get_media_for_fragment_list(
        StreamName=stream, Fragments=[f["FragmentNumber"] for f in frags]
    )["Payload"].read()
    reader = EbmlReader()
    pcm, tcs, times = [], [], []
    for ev in reader.feed(body) + reader.close():
        if isinstance(ev, Leaf) and ev.id == ID.TIMECODE:
            tcs.append(read_uint(ev.data))
        elif isinstance(ev, Leaf) and ev.id == ID.SIMPLE_BLOCK:
            block = parse_block(ev.data)
            times.append(tcs[-1] + block.timecode)
            pcm.append(block.frames[0])
    return ReadBack(b"".join(pcm), tcs, times, [f["FragmentLengthInMilliseconds"] for f in frags])


async def feed(speaker: Speaker, pcm: bytes, chunk: int = 8000, pace: float = 0.0) -> None:
    """Write PCM in 250 ms pieces, faster than real time (timecodes come from sample counts),
    `pace` seconds apart."""
    for i in range(0, len(pcm), chunk):
        await speaker.write(pcm[i : i + chunk])
        if pace:
            await asyncio.sleep(pace)


async def eventually(check: Callable[[], Awaitable[bool]], within: float) -> None:
    deadline = asyncio.get_running_loop().time() + t(within)
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


StartSink = Callable[..., Any]


@pytest.fixture
def start_sink(tmp_path: Path) -> StartSink:
    """`async with start_sink(emulator={...}, tuning=..., **settings) as sink:`."""

    @asynccontextmanager
    async def start(
        *, emulator: dict[str, Any] | None = None, tuning: Tuning = FAST, **overrides: Any
    ) -> AsyncIterator[Sink]:
        config = {"active_delay_seconds": 0.2, "get_media_idle_seconds": 0.5, **(emulator or {})}
        emu = Emulator(EmulatorConfig(data_dir=tmp_path / "kvs", **config))
        await emu.start()
        try:
            settings = load_settings(
                kvs_backend="endpoint",
                kvs_endpoint_url=emu.url,
                **{"session_grace_seconds": 2.0, **overrides},
            )
            async with make_kvs(settings, tuning=tuning) as kvs:
                registry = SessionRegistry(settings, kvs)
                try:
                    yield Sink(emu, settings, kvs, registry)
                finally:
                    await registry.close(t(10))
        finally:
            await emu.stop()

    return start
