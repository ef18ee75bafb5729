"""Drives the demo page (src/kvs_ingest/server/static/index.html) in Chromium (Playwright) or
firefox-esr (WebDriver BiDi, tests/browser/firefox.py) through the same small interface, and
collects what the page showed and the exact chunks it sent."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from playwright.async_api import Page

from tests.browser.firefox import Firefox
from tests.browser.stack import t


class Tab(Protocol):
    """The little the tests need from a browser tab."""

    async def goto(self, url: str) -> None: ...
    async def evaluate(self, expression: str) -> Any: ...
    async def screenshot(self, path: Path) -> None: ...
    async def close(self) -> None: ...


class ChromiumTab:
    def __init__(self, page: Page) -> None:
        self.page = page

    async def goto(self, url: str) -> None:
        await self.page.goto(url)

    async def evaluate(self, expression: str) -> Any:
        return await self.page.evaluate(f"async () => await ({expression})")

    async def screenshot(self, path: Path) -> None:
        await self.page.screenshot(path=str(path), full_page=True)

    async def close(self) -> None:
        await self.page.close()


class FirefoxTab:
    def __init__(self, firefox: Firefox, context: str) -> None:
        self.firefox = firefox
        self.context = context

    @classmethod
    async def open(cls, firefox: Firefox) -> FirefoxTab:
        return cls(firefox, await firefox.new_tab())

    async def goto(self, url: str) -> None:
        await self.firefox.navigate(self.context, url)

    async def evaluate(self, expression: str) -> Any:
        return await self.firefox.evaluate_json(self.context, expression)

    async def screenshot(self, path: Path) -> None:
        png = await self.firefox.screenshot(self.context)
        await asyncio.to_thread(path.write_bytes, png)

    async def close(self) -> None:
        await self.firefox.command("browsingContext.close", {"context": self.context})


async def wait_until(tab: Tab, condition: str, seconds: float, what: str) -> None:
    """Poll a JS condition in the page until it is true (or fail saying what the page shows)."""
    deadline = asyncio.get_running_loop().time() + t(seconds)
    while not await tab.evaluate(condition):
        if asyncio.get_running_loop().time() > deadline:
            shown = await tab.evaluate(SHOWN)
            raise AssertionError(f"page never got to {what}; it shows {shown}")
        await asyncio.sleep(0.05)


SHOWN = """({
  state: document.getElementById("state").textContent,
  sent: document.getElementById("sent-seconds").textContent,
  persisted: document.getElementById("persisted-seconds").textContent,
  error: document.getElementById("error").textContent,
  legs: kvsDemo.legs,
})"""


@dataclass(frozen=True)
class Chunk:
    leg: int  # 1 = first socket
    recorder: int  # 1 = first recorder of that socket
    seq: int
    data: bytes


@dataclass(frozen=True)
class DemoRun:
    """What a recording through the demo page left behind."""

    session: str
    stop_code: int | None
    shown: dict[str, Any]  # the page's #state, #sent-seconds, #persisted-seconds, #error
    sent_seconds: float
    persisted_seconds: float
    chunks: list[Chunk]
    recorder_starts: list[dict[str, int]]  # {leg, recorder, wallMs}: Date.now() at each start

    def recordings(self) -> list[bytes]:
        """Each recorder's chunks concatenated (a decodable stream each), in order."""
        streams: dict[tuple[int, int], list[bytes]] = {}
        for chunk in sorted(self.chunks, key=lambda c: (c.leg, c.recorder, c.seq)):
            streams.setdefault((chunk.leg, chunk.recorder), []).append(chunk.data)
        return [b"".join(parts) for _, parts in sorted(streams.items())]


def demo_url(base: str, **params: str | int) -> str:
    return f"{base}/?{urlencode({**params, 'autostart': 1, 'keep': 1})}"


async def record(
    tab: Tab,
    base_url: str,
    *,
    session: str,
    token: str,
    mime: str,
    timeslice: int,
    seconds: float,
    during: Callable[[Tab], Awaitable[None]] | None = None,
    screenshot: Path | None = None,
) -> DemoRun:
    """Open the demo page with autostart, record for `seconds` (running `during` meanwhile),
    press Stop, and wait until the server closed the socket (1000 = everything persisted)."""
    await tab.goto(demo_url(base_url, session=session, token=token, mime=mime, timeslice=timeslice))
    await wait_until(tab, "kvsDemo.state === 'ready'", 30, "ready")
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    if during is not None:
        await during(tab)
    await asyncio.sleep(max(0.0, end - loop.time()))  # the recording itself, not a sync point
    stop_code = await asyncio.wait_for(tab.evaluate("kvsDemo.stop()"), t(90))
    await wait_until(tab, "['stopped', 'error'].includes(kvsDemo.state)", 30, "stopped")
    shown = await tab.evaluate(SHOWN)
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        await tab.screenshot(screenshot)
    numbers = await tab.evaluate("({s: kvsDemo.sentSeconds, p: kvsDemo.persistedSeconds})")
    raw = await tab.evaluate("kvsDemo.sentChunks()")
    chunks = [Chunk(c["leg"], c["recorder"], c["seq"], base64.b64decode(c["base64"])) for c in raw]
    starts = await tab.evaluate("kvsDemo.recorderStarts")
    return DemoRun(
        session=session,
        stop_code=stop_code,
        shown=shown,
        sent_seconds=float(numbers["s"]),
        persisted_seconds=float(numbers["p"]),
        chunks=chunks,
        recorder_starts=starts,
    )


def describe(run: DemoRun) -> str:
    return json.dumps({"session": run.session, "stop": run.stop_code, **run.shown})
