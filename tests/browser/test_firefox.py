"""firefox-esr, headless, records its fake microphone (a sine tone) through the demo page into
`kvs-ingest serve`; what KVS holds must be that tone, full length.

Driven over WebDriver BiDi (tests/browser/firefox.py): Playwright's Firefox needs its own
patched build, and Debian has no geckodriver. Firefox's fake microphone cannot play a file, so
its source is the tone it generates at `media.navigator.audio.fake_frequency`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from tests.browser import audio
from tests.browser.checks import check_round_trip
from tests.browser.demo import FirefoxTab, record
from tests.browser.firefox import Firefox, firefox_path
from tests.browser.stack import Service, fetch, token

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

FAKE_HZ = 880  # not Firefox's default 1000, so the tone proves the pref reached the device


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def firefox() -> AsyncIterator[Firefox]:
    """One headless firefox-esr for the module (skipped only if it is not installed)."""
    if firefox_path() is None:
        pytest.skip("firefox-esr is not installed (make deps-browser installs it)")
    ff = await Firefox.launch(prefs={"media.navigator.audio.fake_frequency": FAKE_HZ})
    yield ff
    await ff.close()


@pytest.fixture(scope="session")
def tone_reference() -> np.ndarray:
    """One second of the fake tone at 16 kHz (a whole number of periods: loops seamlessly)."""
    t = np.arange(audio.RATE) / audio.RATE
    return np.sin(2 * np.pi * FAKE_HZ * t)


@pytest.mark.parametrize("timeslice", [250, 1000])
@pytest.mark.parametrize("mime", ["audio/ogg;codecs=opus", "audio/webm;codecs=opus"])
async def test_fake_tone_round_trip(
    service: Service,
    firefox: Firefox,
    tone_reference: np.ndarray,
    session_id: str,
    tmp_path: Path,
    artifacts: Path,
    mime: str,
    timeslice: int,
) -> None:
    """Firefox's Ogg and WebM Opus at 250 and 1000 ms: KVS holds the tone, full length."""
    tab = await FirefoxTab.open(firefox)
    try:
        name = mime.split("/")[1].split(";")[0]
        run = await record(
            tab,
            service.http,
            session=session_id,
            token=await token(session_id),
            mime=mime,
            timeslice=timeslice,
            seconds=3.0,
            screenshot=artifacts / f"demo-page-firefox-{name}-{timeslice}.png",
        )
        supported = await tab.evaluate("KvsSpeaker.supportedTypes()")
    finally:
        await tab.close()
    assert mime in supported
    fetched = await fetch(service, session_id, tmp_path / "out.wav")
    measured = check_round_trip(run, fetched, reference=tone_reference, tones=(FAKE_HZ,))
    assert fetched.gaps_ms == [], fetched.stdout
    print(f"firefox {mime} {timeslice} ms: {measured}")
