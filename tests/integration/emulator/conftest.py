"""Fixtures: a real emulator on loopback (port 0) with its own data directory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kvs_ingest.emulator import Emulator, EmulatorConfig

StartEmulator = Callable[..., Awaitable[Emulator]]


@pytest.fixture
async def start_emulator(tmp_path: Path) -> AsyncIterator[StartEmulator]:
    started: list[Emulator] = []

    async def start(**overrides: Any) -> Emulator:
        config: dict[str, Any] = {
            "data_dir": tmp_path / "kvs",
            "active_delay_seconds": 0.0,
            "get_media_idle_seconds": 0.5,
        }
        config.update(overrides)
        emulator = Emulator(EmulatorConfig(**config))
        await emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        await emulator.stop()


@pytest.fixture
async def emulator(start_emulator: StartEmulator) -> Emulator:
    return await start_emulator()
