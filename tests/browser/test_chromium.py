"""Headless Chromium records a fake microphone through the demo page into `kvs-ingest serve`;
`kvs-ingest fetch` reads the session back from the emulator and it must be the same audio."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser

from tests.browser import audio
from tests.browser.checks import (
    DURATION_TOLERANCE,
    MIN_SPEECH_CORRELATION,
    browser_decoded,
    check_round_trip,
    check_stopped_cleanly,
)
from tests.browser.demo import ChromiumTab, DemoRun, Tab, demo_url, record, wait_until
from tests.browser.stack import (
    DropProxy,
    Fetched,
    Service,
    fetch,
    self_signed_cert,
    start_service,
    token,
)

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

OpenTab = Callable[[str], Awaitable[ChromiumTab]]

# The audio types Chromium's MediaRecorder offers (the three, and Matroska's).
CHROMIUM_TYPES = [
    "audio/webm;codecs=opus",
    "audio/webm;codecs=pcm",
    "audio/mp4",
    "audio/x-matroska;codecs=opus",
]
SECONDS = 3.0


async def test_page_offers_the_browsers_types(
    service: Service, chromium_tab: OpenTab, session_id: str
) -> None:
    """#mime lists exactly the types isTypeSupported accepts, the issue's three among them."""
    tab = await chromium_tab("two-tone")
    await tab.goto(f"{service.http}/?session={session_id}")
    offered = await tab.evaluate("[...document.querySelectorAll('#mime option')].map(o => o.value)")
    supported = await tab.evaluate("KvsSpeaker.supportedTypes()")
    assert offered == supported
    assert {"audio/webm;codecs=opus", "audio/webm;codecs=pcm", "audio/mp4"} <= set(offered)
    for element in ("session", "token", "mime", "timeslice", "start", "stop", "state"):
        assert await tab.evaluate(f"!!document.getElementById('{element}')"), element
    assert await tab.evaluate("document.getElementById('state').textContent") == "idle"


MATRIX = [(mime, timeslice) for mime in CHROMIUM_TYPES for timeslice in (250, 1000)]
Recorded = tuple[DemoRun, Fetched]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def matrix(
    service: Service,
    chromium: Callable[[str], Awaitable[Browser]],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, int], Recorded | BaseException]:
    """Every (type, timeslice) recorded at the same time, one tab each in one Chromium (the
    suite's time budget), then fetched; the tests below judge one result each."""
    browser = await chromium("two-tone")
    folder = tmp_path_factory.mktemp("matrix")

    async def one(mime: str, timeslice: int) -> Recorded:
        name = f"matrix-{mime.split('/')[1].replace(';codecs=', '-')}-{timeslice}"
        session = f"{name}-{secrets.token_hex(3)}"
        context = await browser.new_context(viewport={"width": 760, "height": 560})
        try:
            run = await record(
                ChromiumTab(await context.new_page()),
                service.http,
                session=session,
                token=await token(session),
                mime=mime,
                timeslice=timeslice,
                seconds=SECONDS,
            )
        finally:
            await context.close()
        return run, await fetch(service, session, folder / f"{session}.wav")

    results = await asyncio.gather(*(one(*key) for key in MATRIX), return_exceptions=True)
    return dict(zip(MATRIX, results, strict=True))


@pytest.mark.parametrize(("mime", "timeslice"), MATRIX)
async def test_two_tone_round_trip(
    matrix: dict[tuple[str, int], Recorded | BaseException],
    sources: dict[str, audio.Source],
    mime: str,
    timeslice: int,
) -> None:
    """Every Chromium audio type at 250 and 1000 ms: KVS holds the two tones, full length."""
    result = matrix[(mime, timeslice)]
    if isinstance(result, BaseException):
        raise result
    run, fetched = result
    measured = check_round_trip(
        run, fetched, reference=sources["two-tone"].reference, tones=audio.TWO_TONE
    )
    assert fetched.gaps_ms == [], fetched.stdout
    print(f"{mime} {timeslice} ms: {measured}")


@pytest.mark.parametrize(
    ("mime", "timeslice"), [("audio/webm;codecs=opus", 250), ("audio/mp4", 1000)]
)
async def test_speech_round_trip(
    service: Service,
    chromium_tab: OpenTab,
    sources: dict[str, audio.Source],
    session_id: str,
    tmp_path: Path,
    artifacts: Path,
    mime: str,
    timeslice: int,
) -> None:
    """espeak-ng speech through the page correlates with the source; screenshots kept."""
    tab = await chromium_tab("speech")
    name = mime.split("/")[1].split(";")[0]

    async def snapshot(tab: Tab) -> None:
        await wait_until(tab, "kvsDemo.persistedSeconds > 0", 30, "a first ack")
        await tab.screenshot(artifacts / f"demo-page-chromium-{name}-recording.png")

    run = await record(
        tab,
        service.http,
        session=session_id,
        token=await token(session_id),
        mime=mime,
        timeslice=timeslice,
        seconds=4.0,
        during=snapshot,
        screenshot=artifacts / f"demo-page-chromium-{name}-stopped.png",
    )
    fetched = await fetch(service, session_id, tmp_path / "out.wav")
    measured = check_round_trip(
        run,
        fetched,
        reference=sources["speech"].reference,
        min_correlation=MIN_SPEECH_CORRELATION,
    )
    print(f"speech {mime} {timeslice} ms: {measured}")
    assert (artifacts / f"demo-page-chromium-{name}-stopped.png").stat().st_size > 10_000


@pytest.mark.parametrize("mime", ["audio/webm;codecs=opus", "audio/mp4"])
async def test_recorder_restarted_mid_session(
    service: Service,
    chromium_tab: OpenTab,
    sources: dict[str, audio.Source],
    session_id: str,
    tmp_path: Path,
    mime: str,
) -> None:
    """A recorder stopped and a new one started on the same socket: both land in KVS in order."""
    tab = await chromium_tab("two-tone")

    async def restart(tab: Tab) -> None:
        await asyncio.sleep(SECONDS / 2)
        await tab.evaluate("kvsDemo.restartRecorder()")

    run = await record(
        tab,
        service.http,
        session=session_id,
        token=await token(session_id),
        mime=mime,
        timeslice=250,
        seconds=SECONDS,
        during=restart,
    )
    assert {(c.leg, c.recorder) for c in run.chunks} == {(1, 1), (1, 2)}
    fetched = await fetch(service, session_id, tmp_path / "out.wav")
    measured = check_round_trip(
        run, fetched, reference=sources["two-tone"].reference, tones=audio.TWO_TONE
    )
    # Each recording, on its own, is the source waveform too.
    first, _ = browser_decoded(run)
    for part in (fetched.samples[1600 : len(first)], fetched.samples[len(first) + 1600 :]):
        correlation = audio.windowed_correlation(part, sources["two-tone"].reference, window_s=0.5)
        assert correlation >= 0.9, f"{correlation:.3f}; {measured}"
    assert fetched.gaps_ms == [], fetched.stdout
    print(f"restart {mime}: {measured}")


async def record_with_drop(
    service: Service, tab: ChromiumTab, session_id: str, seconds: float
) -> tuple[DemoRun, float]:
    """Record through a proxy that cuts the connection once a second is persisted; returns the
    run and the seconds persisted before the cut."""
    proxy = DropProxy(service.port)
    await proxy.start()
    before_drop: dict[str, float] = {}

    async def drop(tab: Tab) -> None:
        await wait_until(tab, "kvsDemo.persistedSeconds >= 1", 30, "a persisted second")
        before_drop["persisted"] = await tab.evaluate("kvsDemo.persistedSeconds")
        assert proxy.drop() >= 1
        await wait_until(tab, "kvsDemo.legs === 2 && kvsDemo.state === 'ready'", 30, "reconnected")

    try:
        run = await record(
            tab,
            f"http://127.0.0.1:{proxy.port}",
            session=session_id,
            token=await token(session_id),
            mime="audio/webm;codecs=opus",
            timeslice=250,
            seconds=seconds,
            during=drop,
        )
    finally:
        await proxy.close()
    return run, before_drop["persisted"]


async def test_reconnect_after_network_drop(
    service: Service,
    chromium_tab: OpenTab,
    sources: dict[str, audio.Source],
    session_id: str,
    tmp_path: Path,
) -> None:
    """A cut connection (1006): a new socket and recorder; KVS holds both parts, in order, whole."""
    tab = await chromium_tab("two-tone")
    run, persisted_before_drop = await record_with_drop(service, tab, session_id, 5.0)
    check_stopped_cleanly(run)
    assert {(c.leg, c.recorder) for c in run.chunks} == {(1, 1), (2, 1)}
    assert all(c.data[:4] == b"\x1a\x45\xdf\xa3" for c in run.chunks if c.seq == 0), (
        "each socket's first chunk must start with a new EBML header"
    )
    first, second = browser_decoded(run)
    fetched = await fetch(service, session_id, tmp_path / "out.wav")
    note = (
        f"fetched {fetched.seconds:.3f} s, legs {len(first) / audio.RATE:.3f} + "
        f"{len(second) / audio.RATE:.3f} s, persisted before the cut {persisted_before_drop}; "
        f"{fetched.stdout}"
    )
    low = persisted_before_drop + len(second) / audio.RATE - DURATION_TOLERANCE
    high = (len(first) + len(second)) / audio.RATE + DURATION_TOLERANCE
    assert low <= fetched.seconds <= high, note
    assert len(fetched.gaps_ms) <= 1 and fetched.overlaps == 0, note
    # Continuous: with any gap filled with silence, the only silence is that gap.
    filled = await fetch(service, session_id, tmp_path / "filled.wav", fill_gaps=True)
    runs = audio.silent_runs(filled.samples[1600:])
    assert runs == [] if not fetched.gaps_ms else len(runs) == 1, (runs, note)
    peaks = audio.spectral_peaks(fetched.samples[1600:], 2)
    assert all(abs(a - b) <= 5 for a, b in zip(peaks, audio.TWO_TONE, strict=True)), peaks
    # Each socket's audio is the source waveform (the cut falls between them).
    cut = len(fetched.samples) - len(second)
    for part in (fetched.samples[1600 : cut - 800], fetched.samples[cut + 1600 :]):
        correlation = audio.windowed_correlation(part, sources["two-tone"].reference, window_s=0.5)
        assert correlation >= 0.9, f"{correlation:.3f}; {note}"
    print(f"reconnect: gaps {fetched.gaps_ms} ms; {note.splitlines()[0]}")


async def test_server_drain_moves_the_page_to_another_task(
    service: Service,
    chromium_tab: OpenTab,
    sources: dict[str, audio.Source],
    session_id: str,
    tmp_path: Path,
) -> None:
    """A deploy: 1012 from a draining task, the page moves to another; KVS holds both parts."""
    other = await start_service(tmp_path / "other-data", kvs_endpoint=service.emulator_url)
    proxy = DropProxy(other.port)
    await proxy.start()
    drained: dict[str, object] = {}

    async def deploy(tab: Tab) -> None:
        await wait_until(tab, "kvsDemo.persistedSeconds >= 1", 30, "a persisted second")
        proxy.target_port = service.port  # new connections go to the task that stays
        drained["exit"] = await other.stop()  # SIGTERM: drain, 1012, exit
        await wait_until(tab, "kvsDemo.legs === 2 && kvsDemo.state === 'ready'", 30, "moved")
        drained["closes"] = await tab.evaluate("kvsDemo.closes")

    try:
        run = await record(
            await chromium_tab("two-tone"),
            f"http://127.0.0.1:{proxy.port}",
            session=session_id,
            token=await token(session_id),
            mime="audio/webm;codecs=opus",
            timeslice=250,
            seconds=5.0,
            during=deploy,
        )
    finally:
        await proxy.close()
        await other.stop()
    check_stopped_cleanly(run)
    assert drained["exit"] == 0, other.lines[-10:]
    assert drained["closes"] == [{"leg": 1, "code": 1012}], drained
    assert {(c.leg, c.recorder) for c in run.chunks} == {(1, 1), (2, 1)}
    first, second = browser_decoded(run)
    fetched = await fetch(service, session_id, tmp_path / "out.wav")
    note = (
        f"fetched {fetched.seconds:.3f} s, legs {len(first) / audio.RATE:.3f} + "
        f"{len(second) / audio.RATE:.3f} s; {fetched.stdout}; staying task: "
        f"{service.trouble()[-8:]}; drained task: {other.trouble()[-8:]}"
    )
    # Everything the draining task received was flushed: both legs, whole.
    expected = (len(first) + len(second)) / audio.RATE
    assert abs(fetched.seconds - expected) <= DURATION_TOLERANCE, note
    assert fetched.overlaps == 0 and len(fetched.gaps_ms) <= 1, note
    cut = len(first)
    for part in (fetched.samples[1600 : cut - 800], fetched.samples[cut + 1600 :]):
        correlation = audio.windowed_correlation(part, sources["two-tone"].reference, window_s=0.5)
        assert correlation >= 0.9, f"{correlation:.3f}; {note}"
    print(f"drain: {note.splitlines()[0]}")


async def test_timeline_follows_the_wall_clock_across_a_drop(
    service: Service, chromium_tab: OpenTab, session_id: str, tmp_path: Path
) -> None:
    """KVS timecodes follow the page's recorder starts (±250 ms), with an explicit gap between."""
    tab = await chromium_tab("two-tone")
    run, _ = await record_with_drop(service, tab, session_id, 4.0)
    check_stopped_cleanly(run)
    _, second = browser_decoded(run)
    fetched = await fetch(service, session_id, tmp_path / "out.wav")
    starts = {(s["leg"], s["recorder"]): s["wallMs"] for s in run.recorder_starts}
    leg2_in_kvs = (
        fetched.start_ms + (len(fetched.samples) - len(second)) * 1000 / audio.RATE
        + sum(fetched.gaps_ms)
    )  # fmt: skip
    note = (
        f"page starts {starts}, kvs start {fetched.start_ms}, leg 2 at {leg2_in_kvs:.0f}; "
        f"{fetched.stdout}"
    )
    assert abs(fetched.start_ms - starts[(1, 1)]) <= 250, note
    assert len(fetched.gaps_ms) == 1, note
    assert abs(leg2_in_kvs - starts[(2, 1)]) <= 250, note


async def test_page_over_https_speaks_wss(
    chromium: Callable[[str], Awaitable[Browser]],
    sources: dict[str, audio.Source],
    session_id: str,
    tmp_path: Path,
) -> None:
    """Served over HTTPS, the page opens wss:// on its own host, and the audio lands in KVS."""
    cert = await asyncio.to_thread(self_signed_cert, tmp_path)
    secure = await start_service(tmp_path / "data", tls=cert)
    context = await (await chromium("two-tone")).new_context(ignore_https_errors=True)
    try:
        tab = ChromiumTab(await context.new_page())

        async def scheme(tab: Tab) -> None:
            url = await tab.evaluate("kvsDemo.ws.url")
            assert url.startswith(f"wss://127.0.0.1:{secure.port}/v1/sessions/"), url

        run = await record(
            tab,
            secure.http,
            session=session_id,
            token=await token(session_id),
            mime="audio/webm;codecs=opus",
            timeslice=250,
            seconds=2.0,
            during=scheme,
        )
        fetched = await fetch(secure, session_id, tmp_path / "out.wav")
    finally:
        await context.close()
        await secure.stop()
    check_round_trip(run, fetched, reference=sources["two-tone"].reference, tones=audio.TWO_TONE)


@pytest.mark.parametrize(("which", "code"), [("garbled", "4401"), ("other-session", "4403")])
async def test_refused_token_shows_close_code_and_does_not_retry(
    service: Service, chromium_tab: OpenTab, session_id: str, which: str, code: str
) -> None:
    """A bad (4401) or foreign (4403) token: the page shows the code and does not reconnect."""
    tab = await chromium_tab("two-tone")
    if which == "garbled":
        bad = (await token(session_id))[:-4] + "AAAA"
    else:
        bad = await token("another-session")
    await tab.goto(demo_url(service.http, session=session_id, token=bad, timeslice=250))
    await wait_until(tab, "kvsDemo.state === 'error'", 30, "error")
    shown_error = await tab.evaluate("document.getElementById('error').textContent")
    assert shown_error.startswith(code + " "), shown_error
    assert await tab.evaluate("document.getElementById('state').textContent") == "error"
    assert await tab.evaluate("kvsDemo.legs") == 1
