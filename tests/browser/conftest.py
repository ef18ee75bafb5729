"""Fixtures of the browser suite: one `kvs-ingest serve` (embedded emulator, demo page, HS256
auth) for the package, one headless Chromium per fake-microphone source, the sources. Package
scope: the processes end with the suite, not with a longer `make test` run.

Chromium must be installed (`make test` installs Debian's chromium): without it these tests
fail, they do not skip. Timeouts scale with KVS_INGEST_TEST_TIME_FACTOR.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Playwright, async_playwright

from tests.browser import audio
from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.browser.demo import ChromiumTab
from tests.browser.stack import Service, start_service

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "browser"


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's Chromium; its absence is a failure (the Makefile installs it), not a skip."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make deps-browser` (apt-get install chromium)")
    return CHROMIUM


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, audio.Source]:
    """The fake microphones' WAVs: the two-tone signal and espeak-ng speech."""
    folder = tmp_path_factory.mktemp("sources")
    return {"two-tone": audio.two_tone_source(folder), "speech": audio.speech_source(folder)}


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    """`kvs-ingest serve` with DEMO_PAGE=1 on the embedded emulator, for the whole package."""
    svc = await start_service(tmp_path_factory.mktemp("kvs-data"))
    yield svc
    code = await svc.stop()
    assert code == 0, f"serve exited {code}: {svc.lines[-10:]}"


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def playwright() -> AsyncIterator[Playwright]:
    async with async_playwright() as p:
        yield p


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def chromium(
    playwright: Playwright, chromium_executable: str, sources: dict[str, audio.Source]
) -> AsyncIterator[Callable[[str], Awaitable[Browser]]]:
    """`await chromium("two-tone")`: the (shared) Chromium whose fake microphone plays that
    source. Chromium's fake device plays one file per process, hence one per source."""
    browsers: dict[str, Browser] = {}

    async def get(source: str) -> Browser:
        if source not in browsers:
            browsers[source] = await playwright.chromium.launch(
                executable_path=chromium_executable,
                args=[
                    *CHROMIUM_ARGS,
                    f"--use-file-for-fake-audio-capture={sources[source].path}",
                ],
            )
        return browsers[source]

    yield get
    for browser in browsers.values():
        await browser.close()


@pytest_asyncio.fixture(loop_scope="session")
async def chromium_tab(
    chromium: Callable[[str], Awaitable[Browser]],
) -> AsyncIterator[Callable[[str], Awaitable[ChromiumTab]]]:
    """`await chromium_tab("two-tone")`: a new tab (own context) closed after the test."""
    contexts = []

    async def open_tab(source: str) -> ChromiumTab:
        browser = await chromium(source)
        context = await browser.new_context(viewport={"width": 760, "height": 560})
        contexts.append(context)
        return ChromiumTab(await context.new_page())

    yield open_tab
    for context in contexts:
        await context.close()


@pytest.fixture
def session_id(request: pytest.FixtureRequest) -> str:
    """A fresh session id named after the test."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")[:90]
    return f"{name}-{secrets.token_hex(3)}"


@pytest.fixture(scope="session")
def artifacts() -> Iterator[Path]:
    """artifacts/browser/ (gitignored): screenshots of the demo page."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield ARTIFACTS
