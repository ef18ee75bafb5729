"""The whole chain in one process: emulator ← SessionRegistry ← IngestServer, and read-back.

Read-back goes through boto3 (ListFragments + GetMediaForFragmentList, as a consumer would), so
what a test sees is what KVS would hand a downstream reader.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from kvs_ingest.emulator import Emulator, EmulatorConfig
from kvs_ingest.kvs.control import make_kvs
from kvs_ingest.kvs.tuning import DEFAULT_TUNING, Tuning
from kvs_ingest.server.app import ServerLimits
from kvs_ingest.sessions import SessionRegistry
from tests.kvsread import Block, read_blocks

from .conftest import Running, running_server, t, test_settings

REPO = Path(__file__).resolve().parents[3]
CORPUS = REPO / "tests" / "data" / "browser" / "chromium"


@dataclass
class Chain:
    srv: Running
    emulator: Emulator
    registry: Any


@asynccontextmanager
async def chain(
    tmp: Path,
    *,
    limits: ServerLimits | None = None,
    emulator: dict[str, Any] | None = None,
    tuning: Tuning = DEFAULT_TUNING,
    **overrides: Any,
) -> AsyncIterator[Chain]:
    """Emulator on loopback, a real registry on it, and an ingest server in front."""
    emu = Emulator(
        EmulatorConfig(data_dir=tmp / "kvs", **{"active_delay_seconds": 0.2, **(emulator or {})})
    )
    await emu.start()
    try:
        settings = test_settings(
            kvs_backend="endpoint", kvs_endpoint_url=emu.url,
            **{"session_grace_seconds": 2.0, "drain_timeout_seconds": 20.0, **overrides},
        )  # fmt: skip
        async with make_kvs(settings, endpoint_url=emu.url, tuning=tuning) as kvs:
            registry = SessionRegistry(settings, kvs)
            async with running_server(registry, settings=settings, limits=limits) as srv:
                yield Chain(srv, emu, registry)
    finally:
        await emu.stop()


async def add_fault(emu: Emulator, spec: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(emu.url + "/_emulator/faults", json=spec) as resp:
            assert resp.status == 200, await resp.text()


def corpus_chunks(name: str = "webm-opus-250-speech") -> list[bytes]:
    folder = CORPUS / name
    return [p.read_bytes() for p in sorted(folder.glob("chunk-*.bin"))]


def ffmpeg_pcm(data: bytes, *input_opts: str) -> np.ndarray:
    """The oracle: ffmpeg's decode of a whole recording to 16 kHz mono s16."""
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", *input_opts, "-i", "pipe:0",
         "-ar", "16000", "-ac", "1", "-f", "s16le", "pipe:1"],
        input=data, capture_output=True, check=True, timeout=t(120),
    )  # fmt: skip
    return np.frombuffer(done.stdout, np.int16)


async def read_stream(endpoint: str, stream: str) -> list[Block]:
    """Every block of `stream` in fragment order (boto3 runs off the loop)."""
    blocks, _ = await asyncio.to_thread(read_blocks, endpoint, stream)
    return blocks


def pcm_of(blocks: list[Block]) -> np.ndarray:
    return np.frombuffer(b"".join(b.pcm for b in blocks), np.int16)


def correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 1600) -> float:
    """Normalised correlation of two signals after aligning them (lag found by FFT)."""
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    n = min(len(x), len(y))
    if n == 0:
        return 0.0
    size = 1 << int(np.ceil(np.log2(len(x) + len(y))))
    xc = np.fft.irfft(np.fft.rfft(x, size) * np.conj(np.fft.rfft(y, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    lag = int(lags[np.argmax(np.concatenate([xc[: max_lag + 1], xc[-max_lag:]]))])
    xs, ys = (x[lag:], y) if lag >= 0 else (x, y[-lag:])
    m = min(len(xs), len(ys))
    xs, ys = xs[:m], ys[:m]
    den = np.sqrt((xs * xs).sum() * (ys * ys).sum())
    return float((xs * ys).sum() / den) if den else 0.0
