"""`kvs-ingest` subprocesses for the CLI tests: start, find the port in the JSON log, signal."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from tests.jsonlog import follow_json_log

TIME_FACTOR = float(os.environ.get("KVS_INGEST_TEST_TIME_FACTOR", "1"))
# The command under test; KVS_INGEST_TEST_CMD may point elsewhere (e.g. an installed script).
CMD = os.environ.get("KVS_INGEST_TEST_CMD", f"{sys.executable} -m kvs_ingest").split()


def t(seconds: float) -> float:
    return seconds * TIME_FACTOR


def clean_env(**extra: str) -> dict[str, str]:
    """The parent's environment without our settings or AWS hints, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KVS_INGEST_", "AWS_", "KVS_EMULATOR_"))
    }
    env.update({"KVS_INGEST_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


@dataclass
class Serve:
    proc: asyncio.subprocess.Process
    port: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), t(90))
        if self._reader is not None:
            await asyncio.wait_for(self._reader, t(10))
        return code


async def start_serve(env: dict[str, str]) -> Serve:
    """`kvs-ingest serve` on a free loopback port; returns once it logged `listening`."""
    proc = await asyncio.create_subprocess_exec(
        *CMD, "serve", "--host", "127.0.0.1", "--port", "0",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    serve = Serve(proc)
    assert proc.stderr is not None
    serve._reader, listening = follow_json_log(proc.stderr, serve.lines)
    serve.port = await asyncio.wait_for(listening, t(60))
    return serve
