"""Real ingest servers on loopback port 0, and WebSocket/HTTP helpers for talking to them."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from kvs_ingest.config import Settings, load_settings
from kvs_ingest.server.app import IngestServer, ServerLimits

TIME_FACTOR = float(os.environ.get("KVS_INGEST_TEST_TIME_FACTOR", "1"))
SECRET = "integration-secret-integration-secret-0123"


def t(seconds: float) -> float:
    """A timeout scaled for slow machines."""
    return seconds * TIME_FACTOR


class NoSessions:
    """A registry for tests that must be decided before any session is opened."""

    def __init__(self) -> None:
        self.healthy = True
        self.opened: list[str] = []

    async def open(self, session_id: str) -> Any:
        self.opened.append(session_id)
        raise AssertionError("a refused socket must not open a session")

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109
        return None

    def __len__(self) -> int:
        return 0


@dataclass
class Running:
    server: IngestServer
    shutdown: asyncio.Event
    task: asyncio.Task[None]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def ws_url(self, session: str, query: str = "") -> str:
        q = f"?{query}" if query else ""
        return f"ws://127.0.0.1:{self.server.port}/v1/sessions/{session}/speaker{q}"


@asynccontextmanager
async def running_server(
    registry: Any,
    *,
    limits: ServerLimits | None = None,
    static_files: dict[str, tuple[bytes, str]] | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> AsyncIterator[Running]:
    settings = settings or test_settings(**overrides)
    server = IngestServer(settings, registry, limits=limits, static_files=static_files)
    await server.start()
    shutdown = asyncio.Event()
    task = asyncio.create_task(server.run(shutdown.wait()))
    try:
        yield Running(server, shutdown, task)
    finally:
        shutdown.set()
        await asyncio.wait_for(task, t(60))


def test_settings(**overrides: Any) -> Settings:
    """Settings for a loopback server on a free port, whatever the environment says."""
    return load_settings(**{"host": "127.0.0.1", "port": 0, "auth_mode": "none", **overrides})


def speaker_protocols(token: str | None) -> list[Any]:
    return ["kvs-ingest.v1", *([f"bearer.{token}"] if token else [])]


@asynccontextmanager
async def speaker(
    url: str, token: str | None = None, **kwargs: Any
) -> AsyncIterator[ClientConnection]:
    async with connect(
        url,
        subprotocols=speaker_protocols(token),
        compression=None,
        open_timeout=t(20),
        max_size=None,
        **kwargs,
    ) as ws:
        yield ws


@dataclass
class Ending:
    """What a client saw until the socket closed."""

    messages: list[dict[str, Any]]
    code: int | None
    reason: str

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "error"]

    @property
    def acks(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "ack"]


async def read_until_closed(ws: ClientConnection, within: float = 30) -> Ending:
    """Collect every JSON message until the server closes the socket."""
    messages: list[dict[str, Any]] = []

    async def collect() -> None:
        try:
            async for msg in ws:
                messages.append(json.loads(msg))
        except ConnectionClosed:
            pass

    await asyncio.wait_for(collect(), t(within))
    rcvd = ws.close_code
    return Ending(messages, rcvd, ws.close_reason or "")


async def http_get(url: str, **kwargs: Any) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=t(20))) as http:
        async with http.get(url, **kwargs) as resp:
            return resp.status, await resp.text(), dict(resp.headers)
