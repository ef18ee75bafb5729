"""Following a `kvs-ingest` subprocess's JSON log, shared by every suite that starts one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any


def follow_json_log(
    stream: asyncio.StreamReader,
    lines: list[dict[str, Any]],
    on_line: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[asyncio.Task[None], asyncio.Future[int]]:
    """Read `stream` line by line into `lines` (non-JSON lines as `{"event": "raw"}`); the future
    gets the port of the first `listening` line, or fails when the process exits without one.
    Keep the task: it must run for as long as the process writes."""
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        async for raw in stream:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "raw", "text": raw.decode(errors="replace").rstrip()}
            if not isinstance(line, dict):
                line = {"event": "raw", "text": str(line)}
            lines.append(line)
            if on_line is not None:
                on_line(line)
            if line.get("event") == "listening" and not listening.done():
                listening.set_result(int(line["port"]))
        if not listening.done():
            listening.set_exception(RuntimeError(f"serve exited: {lines[-20:]}"))

    return asyncio.create_task(read()), listening
