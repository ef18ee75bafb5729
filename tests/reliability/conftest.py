"""The reliability suite's machinery: real processes, a recording speaker, the sample-exact audit.

Every scenario starts the emulator and the service as subprocesses on loopback (so SIGKILL,
SIGTERM and restarts are real), drives them with `speak()` (a small websockets client that
sends pre-encoded WebM/Opus chunks and records every `ack`), injects faults through the
emulator's `/_emulator/` API, and ends with `audit()`: the stream is read back with boto3
(ListFragments + GetMediaForFragmentList) and its PCM compared with what the speakers' audio
decodes to. Each scenario calls `record()`; at the end of the run `report.py` rewrites the
results table in docs/RELIABILITY.md from every scenario's JSON under artifacts/reliability/.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from kvs_ingest.client.speak import chunk as cut_chunks
from kvs_ingest.client.speak import encode
from kvs_ingest.media import MediaError, StreamDecoder
from kvs_ingest.server.auth import mint_token
from tests.jsonlog import follow_json_log
from tests.kvsread import read_blocks

from .report import RESULTS_DIR, write_table

TIME_FACTOR = float(os.environ.get("KVS_INGEST_TEST_TIME_FACTOR", "1"))
REPO = Path(__file__).resolve().parents[2]
SECRET = "reliability-secret-reliability-secret-01"
RATE = 16_000
TIMESLICE_MS = 250.0
# Our resampler and ffmpeg's may differ by the last bit (measured: max |diff| 1 on Opus/48 kHz);
# ffmpeg is then checked by correlation and our own decode of the same chunks sample-exactly.
FFMPEG_MIN_CORRELATION = 0.99


def t(seconds: float) -> float:
    """A timeout scaled for slow machines (KVS_INGEST_TEST_TIME_FACTOR)."""
    return seconds * TIME_FACTOR


# --- pytest wiring ------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-soak", action="store_true", default=False, help="run the long soak scenarios"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long soak scenario, run only with --run-soak")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-soak"):
        return
    skip = pytest.mark.skip(reason="soak: needs --run-soak (make soak)")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Rewrite docs/RELIABILITY.md from the scenarios' JSON results (this run's and earlier)."""
    if any(RESULTS_DIR.glob("*.json")):
        write_table()
    shutil.rmtree(_scratch(), ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Write the test's verdict into the results it recorded (the table's "verdict" column)."""
    report = yield
    # a skip (soak without --run-soak) keeps the verdict of the run that measured the figures
    if report.when == "call" or (report.when == "setup" and report.outcome == "failed"):
        verdict = "xfail" if hasattr(report, "wasxfail") else report.outcome
        for path in RESULTS_DIR.glob("*.json"):
            with contextlib.suppress(ValueError, OSError):
                entry = json.loads(path.read_text())
                if entry.get("test") == item.nodeid:
                    entry["verdict"] = verdict
                    path.write_text(json.dumps(entry, indent=1) + "\n")
    return report


def record(scenario: str, promise: str, **figures: Any) -> None:
    """Store one scenario's measured figures for the results table (artifacts/reliability/).

    Call it before the assertions: a failing scenario still shows what it measured."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    entry = {
        "scenario": scenario,
        "promise": promise,
        "figures": figures,
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "test": current.rsplit(" (", 1)[0],
        "verdict": "running",
    }
    path = RESULTS_DIR / f"{scenario}.json"
    path.write_text(json.dumps(entry, indent=1, default=_plain) + "\n")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


# --- recordings -------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One speaker's recording, encoded once like MediaRecorder, with its oracles.

    `ours` is what our StreamDecoder makes of all chunks (the sample-exact reference); `ffmpeg`
    is ffmpeg's decode of the concatenated chunks (the outside oracle); `acked[n]` is how many
    samples the decoder had produced after chunk n (what an ack for seq n promises).
    """

    chunks: tuple[bytes, ...]
    seconds: float
    ours: np.ndarray
    ffmpeg: np.ndarray
    acked: tuple[int, ...]

    def decode_prefix(self, n: int) -> np.ndarray:
        """What our decoder makes of the first n chunks, flushed (a socket that ended there)."""
        return decode_chunks(self.chunks[:n])


def decode_chunks(chunks: Sequence[bytes]) -> np.ndarray:
    """Our decoder's PCM for `chunks`, flushed; a stream cut inside an element ends with the
    frames it completed and the codec's tail (`MediaError.pcm`), as the service keeps them."""
    decoder = StreamDecoder("webm")
    parts = [p.data for c in chunks for p in decoder.feed(c)]
    try:
        parts += [p.data for p in decoder.flush()]
    except MediaError as exc:
        parts += [p.data for p in getattr(exc, "pcm", [])]
    return np.frombuffer(b"".join(parts), np.int16)


def ffmpeg_decode(data: bytes) -> np.ndarray:
    """The outside oracle: `ffmpeg -i <chunks> -ar 16000 -ac 1 -f s16le`."""
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i", "pipe:0",
         "-ar", "16000", "-ac", "1", "-f", "s16le", "pipe:1"],
        input=data, capture_output=True, check=True, timeout=t(300),
    )  # fmt: skip
    return np.frombuffer(done.stdout, np.int16)


def synth_wav(path: Path, seconds: float, seed: int, offset: int = 0) -> None:
    """A deterministic speech-like test signal (gliding tones, bursts of noise, pauses), from
    48 kHz sample `offset` on: a later part of the same signal is a resend of the same audio."""
    rate = 48_000
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    tt = (offset + np.arange(n)) / rate
    f0 = 180 + 120 * np.sin(2 * np.pi * 0.37 * tt + seed)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = 0.3 * np.sin(phase) + 0.15 * np.sin(3 * phase) + 0.08 * np.sin(5 * phase)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.1 * tt + rng.uniform(0, 6)) ** 2
    noise = 0.05 * np.random.default_rng([seed, offset]).standard_normal(n)
    signal_ = (voiced * envelope + noise) * (np.sin(2 * np.pi * 0.13 * tt) > -0.8)
    pcm = (np.clip(signal_, -1, 1) * 20000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _scratch() -> Path:
    """This run's scratch folder for test signals (removed when the run ends)."""
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"kvs-rel-{os.getpid()}"


_RECORDINGS: dict[tuple[float, int, int], Recording] = {}


def recording(seconds: float, seed: int = 0, *, offset: int = 0) -> Recording:
    """The recording of `seconds` of test signal number `seed` from 48 kHz sample `offset`
    (encoded once per run)."""
    key = (seconds, seed, offset)
    if key in _RECORDINGS:
        return _RECORDINGS[key]
    folder = _scratch()
    folder.mkdir(parents=True, exist_ok=True)
    wav = folder / f"signal-{seconds}-{seed}-{offset}.wav"
    synth_wav(wav, seconds, seed, offset)
    data, duration = encode(wav, "webm")
    wav.unlink()  # up to 58 MB for the 10-minute one; the chunks are all we keep
    chunks = tuple(c.data for c in cut_chunks(data, duration, "webm", TIMESLICE_MS))
    decoder = StreamDecoder("webm")
    parts: list[bytes] = []
    acked: list[int] = []
    total = 0
    for c in chunks:
        for p in decoder.feed(c):
            parts.append(p.data)
            total += p.samples
        acked.append(total)
    parts += [p.data for p in decoder.flush()]
    rec = Recording(
        chunks=chunks,
        seconds=duration,
        ours=np.frombuffer(b"".join(parts), np.int16),
        ffmpeg=ffmpeg_decode(b"".join(chunks)),
        acked=tuple(acked),
    )
    _RECORDINGS[key] = rec
    return rec


# --- processes --------------------------------------------------------------------------

_EMULATOR_MAIN = """
import asyncio, json, signal, sys
from kvs_ingest.emulator import Emulator, EmulatorConfig
async def main():
    emu = Emulator(EmulatorConfig.from_env(data_dir=sys.argv[1], port=int(sys.argv[2])))
    await emu.start()
    print("EMULATOR_URL " + emu.url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    await emu.stop()
asyncio.run(main())
"""

_SERVE_MAIN = """
import argparse, sys
from kvs_ingest.server.cli import run
sys.exit(run(argparse.Namespace(host="127.0.0.1", port=0)))
"""


def base_env(**extra: str) -> dict[str, str]:
    """The parent's environment without our settings or AWS hints, plus test credentials."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KVS_INGEST_", "AWS_", "KVS_EMULATOR_"))
    }
    env.update(
        PYTHONUNBUFFERED="1",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
    )
    env.update(extra)
    return env


@dataclass
class EmulatorProc:
    """`Emulator` in its own process; `kill()` + `start()` is a real crash and restart."""

    data_dir: Path
    env: dict[str, str]
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    url: str = ""

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _EMULATOR_MAIN, str(self.data_dir), str(self.port),
            env=self.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert self.proc.stdout is not None
        while True:
            line = await asyncio.wait_for(self.proc.stdout.readline(), t(60))
            if not line:
                raise RuntimeError("emulator exited before it listened")
            if line.startswith(b"EMULATOR_URL "):
                self.url = line.split()[1].decode()
                self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
                break
        asyncio.get_running_loop().create_task(self._drain_stdout(self.proc))

    @staticmethod
    async def _drain_stdout(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    async def kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), t(20))
            except TimeoutError:
                await self.kill()

    async def fault(self, spec: dict[str, Any]) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.post(self.url + "/_emulator/faults", json=spec) as resp:
                assert resp.status == 200, await resp.text()
                return dict(await resp.json())

    async def clear_faults(self) -> None:
        async with aiohttp.ClientSession() as http:
            async with http.delete(self.url + "/_emulator/faults") as resp:
                assert resp.status == 200, await resp.text()

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(self.url + "/_emulator/stats") as resp:
                return dict(await resp.json())


@dataclass
class ServiceProc:
    """`kvs-ingest serve` in its own process, its JSON log lines collected from stderr."""

    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    port: int = 0
    lines: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, session: str) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/sessions/{session}/speaker?format=webm"

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SERVE_MAIN, env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc is not None and self.proc.stderr is not None
        self._reader, listening = follow_json_log(self.proc.stderr, self.lines)
        self.port = await asyncio.wait_for(listening, t(60))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def signal(self, sig: signal.Signals) -> int:
        """Send `sig` and wait for the exit status."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), t(90))
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reader, t(10))
        return code

    async def metrics(self) -> dict[str, float]:
        """The Prometheus text of /metrics as {sample name with labels: value}."""
        async with aiohttp.ClientSession() as http:
            async with http.get(self.http + "/metrics") as resp:
                text = await resp.text()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def rss_bytes(self) -> int:
        import psutil

        return int(psutil.Process(self.pid).memory_info().rss)


def service_env(emulator_url: str, **settings: Any) -> dict[str, str]:
    """Environment of a service on `emulator_url`: HS256 auth, rate limit raised for fast feeds."""
    values: dict[str, Any] = {
        "KVS_BACKEND": "endpoint",
        "KVS_ENDPOINT_URL": emulator_url,
        "AUTH_MODE": "hs256",
        "AUTH_SECRET": SECRET,
        "LOG_FORMAT": "json",
        "RATE_LIMIT_FACTOR": 1000,
        "RATE_BURST_SECONDS": 3600,
        "SESSION_GRACE_SECONDS": 5,
        "DRAIN_TIMEOUT_SECONDS": 30,
        **settings,
    }
    return base_env(**{f"KVS_INGEST_{k.upper()}": str(v) for k, v in values.items()})


@dataclass
class Stack:
    emulator: EmulatorProc
    service: ServiceProc


@asynccontextmanager
async def stack(
    tmp: Path, *, emulator: dict[str, Any] | None = None, **settings: Any
) -> AsyncIterator[Stack]:
    """Emulator and service processes on loopback; both are stopped (or killed) afterwards."""
    emu_env = base_env(
        **{"KVS_EMULATOR_ACTIVE_DELAY_SECONDS": "0.2"},
        **{f"KVS_EMULATOR_{k.upper()}": str(v) for k, v in (emulator or {}).items()},
    )
    emu = EmulatorProc(tmp / "kvs", emu_env)
    await emu.start()
    stk = Stack(emu, ServiceProc(service_env(emu.url, **settings)))
    try:
        await stk.service.start()
        yield stk
    finally:
        # a scenario may have replaced the service (restart): end whichever is current
        proc = stk.service.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await emu.stop()


# --- the speaker ------------------------------------------------------------------------


def token(session: str, ttl: int = 3600) -> str:
    return mint_token(SECRET, session, ttl=ttl)


@dataclass
class Outcome:
    """What one speaker socket saw: every message, the acks, the close."""

    acks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    ready: dict[str, Any] | None = None
    sent: int = 0  # chunks handed to the socket
    close_code: int | None = None
    send_times: list[float] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return int(self.acks[-1]["seq"]) if self.acks else -1


async def speak(
    url: str,
    tok: str,
    chunks: Sequence[bytes],
    *,
    speed: float = 20.0,
    stop: bool = True,
    stop_timeout: float = 120.0,
    on_sent: Callable[[int], None] | None = None,
    halt: asyncio.Event | None = None,
    headers: dict[str, str] | None = None,
) -> Outcome:
    """Send `chunks` paced at `speed` times real time, then `stop`; return once the socket closes.

    Sending ends early when the server closes the socket or sends an `error` notice (a draining
    server's 1012: what was sent before it is still read), or when `halt` is set (then the
    socket is closed without `stop`, like a tab that went away).
    """
    out = Outcome()
    closed = asyncio.Event()
    async with connect(
        url, subprotocols=["kvs-ingest.v1", f"bearer.{tok}"], compression=None,  # type: ignore[list-item]
        open_timeout=t(30), max_size=None, close_timeout=t(10), additional_headers=headers,
    ) as ws:  # fmt: skip

        async def receive() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg.get("type") == "ack":
                        out.acks.append(msg)
                    elif msg.get("type") == "error":
                        out.errors.append(msg)
                    elif msg.get("type") == "ready":
                        out.ready = msg
            closed.set()

        receiver = asyncio.create_task(receive())
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            for i, data in enumerate(chunks):
                due = start + i * TIMESLICE_MS / 1000.0 / speed
                delay = due - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), delay)
                if closed.is_set() or out.errors or (halt is not None and halt.is_set()):
                    break  # closed, told to go (1012/4503 notice), or gone away
                await ws.send(data)
                out.sent += 1
                out.send_times.append(loop.time())
                if on_sent is not None:
                    on_sent(i)
            else:
                if stop:
                    await ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass
        if halt is not None and halt.is_set() and not closed.is_set():
            await ws.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closed.wait(), t(stop_timeout))
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        out.close_code = ws.close_code
    return out


# --- the audit --------------------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """The sample-exact verdict on one stream against the speakers' recordings."""

    stream: str
    expected_samples: int
    got_samples: int
    lost: int  # expected samples not found in place
    duplicated: int  # samples in the stream beyond the expected ones
    mismatched: bool  # any difference at all
    backwards: int  # blocks whose timecode does not increase
    overlaps: int  # blocks that start before the previous one ended
    gaps: tuple[tuple[int, int], ...]  # (sample position, ms) of every hole in the timeline
    unexplained_gaps: tuple[tuple[int, int], ...]  # holes not at a speaker's absence
    fragments: int
    ffmpeg_correlation: float
    ffmpeg_max_diff: int

    @property
    def clean(self) -> bool:
        return (
            not self.mismatched
            and self.backwards == 0
            and self.overlaps == 0
            and not self.unexplained_gaps
            and self.ffmpeg_correlation >= FFMPEG_MIN_CORRELATION
        )

    def figures(self) -> dict[str, Any]:
        return {
            "samples_expected": self.expected_samples,
            "samples_lost": self.lost,
            "samples_duplicated": self.duplicated,
            "timecodes_backwards": self.backwards,
            "gaps_unexplained": len(self.unexplained_gaps),
            "ffmpeg_corr": round(self.ffmpeg_correlation, 5),
        }


def lost_and_duplicated(expected: np.ndarray, got: np.ndarray) -> tuple[int, int]:
    """Samples of `expected` missing from `got` and extra samples in `got` (0, 0 iff equal).

    The longest common prefix and suffix are matched; whatever lies between them counts as lost
    (on the expected side) and as duplicated or wrong (on the stream side).
    """
    n = min(len(expected), len(got))
    diff = np.nonzero(expected[:n] != got[:n])[0]
    prefix = int(diff[0]) if len(diff) else n
    rest_e, rest_g = expected[prefix:], got[prefix:]
    m = min(len(rest_e), len(rest_g))
    if m:
        diff_s = np.nonzero(rest_e[::-1][:m] != rest_g[::-1][:m])[0]
        suffix = int(diff_s[0]) if len(diff_s) else m
    else:
        suffix = 0
    return len(expected) - prefix - suffix, len(got) - prefix - suffix


def _ffmpeg_check(ours: np.ndarray, ffmpeg: np.ndarray) -> tuple[float, int]:
    n = min(len(ours), len(ffmpeg))
    if n == 0:
        return (1.0 if len(ours) == len(ffmpeg) else 0.0), 0
    a = ours[:n].astype(np.float64)
    b = ffmpeg[:n].astype(np.float64)
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    corr = float((a * b).sum() / den) if den else 1.0
    return corr, int(np.abs(a - b).max())


async def audit(
    endpoint: str,
    stream: str,
    segments: Sequence[np.ndarray],
    *,
    ffmpeg_segments: Sequence[np.ndarray] | None = None,
    drift_gap_ms: int = 0,
) -> Audit:
    """Fetch `stream` and compare it with `segments` (each speaker socket's audio, in order).

    A hole in the timeline is explained when it falls where one segment ends and the next
    begins (the speaker was away); `drift_gap_ms` > 0 also allows the timeline's bounded
    forward drift corrections of up to that many ms at fragment boundaries.
    """
    blocks, fragments = await asyncio.to_thread(read_blocks, endpoint, stream)
    got = np.frombuffer(b"".join(b.pcm for b in blocks), np.int16)
    expected = np.concatenate(list(segments)) if segments else np.zeros(0, np.int16)
    lost, dup = lost_and_duplicated(expected, got)
    boundaries = set(np.cumsum([len(s) for s in segments])[:-1].tolist()) if segments else set()
    backwards = overlaps = 0
    gaps: list[tuple[int, int]] = []
    unexplained: list[tuple[int, int]] = []
    position = 0
    for prev, cur in itertools.pairwise(blocks):
        position += len(prev.pcm) // 2
        end_ms = prev.ms + (len(prev.pcm) // 2) * 1000 / RATE
        if cur.ms <= prev.ms:
            backwards += 1
        if cur.ms < end_ms - 1:
            overlaps += 1
        elif cur.ms > end_ms + 1:
            hole = (position, round(cur.ms - end_ms))
            gaps.append(hole)
            if position not in boundaries and not (0 < hole[1] <= drift_gap_ms):
                unexplained.append(hole)
    if ffmpeg_segments is not None:
        corr, max_diff = _ffmpeg_check(expected, np.concatenate(list(ffmpeg_segments)))
    else:
        corr, max_diff = 1.0, 0
    return Audit(
        stream=stream,
        expected_samples=len(expected),
        got_samples=len(got),
        lost=lost,
        duplicated=dup,
        mismatched=not np.array_equal(expected, got),
        backwards=backwards,
        overlaps=overlaps,
        gaps=tuple(gaps),
        unexplained_gaps=tuple(unexplained),
        fragments=len(fragments),
        ffmpeg_correlation=corr,
        ffmpeg_max_diff=max_diff,
    )


# --- measuring while a scenario runs ----------------------------------------------------


@asynccontextmanager
async def sampling(
    service: ServiceProc, interval: float = 0.2
) -> AsyncIterator[dict[str, list[float]]]:
    """Poll the service's /metrics and RSS every `interval` s while the block runs."""
    series: dict[str, list[float]] = {"buffered": [], "rss": [], "lag": [], "bytes_in": []}

    async def poll() -> None:
        while True:
            with contextlib.suppress(Exception):
                m = await service.metrics()
                series["buffered"].append(m.get("kvs_ingest_buffered_seconds", 0.0))
                series["lag"].append(m.get("kvs_ingest_event_loop_lag_seconds", 0.0))
                series["bytes_in"].append(m.get("kvs_ingest_bytes_in_total", 0.0))
                series["rss"].append(float(service.rss_bytes()))
            await asyncio.sleep(interval)

    task = asyncio.create_task(poll())
    try:
        yield series
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(
    predicate: Callable[[], Any], within: float, what: str, step: float = 0.1
) -> float:
    """Poll an (async or sync) predicate until true; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + t(within)
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {t(within):.0f} s waiting for {what}")
        await asyncio.sleep(step)
