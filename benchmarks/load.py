"""Load benchmark: the service under N real-time speakers, against the old design, in one run.

Each step starts fresh processes: the KVS emulator, the service under test (`kvs-ingest serve`
on the emulator, or `old_design.py`), and one or two load processes (`speakers.py`) whose N
speakers replay the same pre-encoded Chrome-like WebM/Opus chunks (~250 ms each) in real time,
each socket its own session, for D seconds, then `stop`. It measures the service process only:

- CPU seconds per second of audio (psutil on the service PID; for the old design including
  the ffmpeg children it waited for), over the steady window (all speakers sending);
- real-time speakers per core (1 / that figure);
- RSS per speaker (steady-window RSS minus the idle process, over N);
- event-loop lag: p99 over every probe in the window (the service's
  `kvs_ingest_event_loop_lag_probe_seconds` histogram, probed 10 times a second; reported as
  the upper bound of the bucket that holds it) and max of the gauge scraped each second;
- chunk sent → `ack` latency p50/p99/max from the speakers' view;
- audio sent (what our decoder makes of the chunks) vs persisted (the speakers' last acks);
- errors (closes other than 1000, `error` messages, refused sockets).

N steps upward until a step fails (a speaker loses audio or errors, falls behind real time by
more than 1 s, or p99 latency exceeds FRAGMENT_MS + 250 ms) and the largest N that held is
printed. The old design runs the same harness at small N. Plots and the "## Load" figures of
benchmarks/RESULTS.md are written from the run. Run: `.venv/bin/python benchmarks/load.py`
(~12 min) or `--quick` (~3 min).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pickle
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from speakers import Recording, encode_chunks  # noqa: E402

PY = sys.executable
FRAGMENT_MS = 1000
LATENCY_TARGET = FRAGMENT_MS / 1000 + 0.25
BEHIND_LIMIT = 1.0  # a send later than this against the recorder's clock: behind real time
WARMUP = 3.0  # seconds after the first sends before the steady window opens
SPEAKERS_PER_PROCESS = 250
STARVED = 0.25  # runqueue wait share above which a failed step is marked as CPU-starved

EMULATOR_CODE = """
import asyncio, signal, sys
from pathlib import Path
from kvs_ingest.emulator import Emulator, EmulatorConfig

async def main():
    config = EmulatorConfig.from_env(data_dir=Path(sys.argv[2]), host="127.0.0.1",
                                     port=int(sys.argv[1]))
    emulator = Emulator(config)
    await emulator.start()
    Path(sys.argv[3]).write_text(emulator.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await emulator.stop()

import uvloop
uvloop.run(main())
"""

SERVE_CODE = (
    "import argparse, sys\n"
    "from kvs_ingest.server import cli\n"
    "sys.exit(cli.run(argparse.Namespace(host=None, port=None)))\n"
)


@dataclass
class Step:
    """One step's figures; `held` says whether it met every condition."""

    design: str
    n: int
    seconds: float
    cpu_per_audio_s: float = math.nan
    speakers_per_core: float = math.nan
    rss_base_mib: float = math.nan
    rss_mib: float = math.nan
    rss_per_speaker_kib: float = math.nan
    lag_p99_ms: float = math.nan
    lag_max_ms: float = math.nan
    lag_probes: int = 0
    latency_p50: float = math.nan
    latency_p99: float = math.nan
    latency_max: float = math.nan
    audio_expected_s: float = 0.0
    audio_sent_s: float = 0.0
    audio_persisted_s: float = 0.0
    chunks_sent: int = 0
    chunks_acked: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    max_late_s: float = 0.0
    load_cpu_s: float = 0.0
    emulator_cpu_share: float = math.nan  # of one core, over the steady window
    lag_series_ms: list[float] = field(default_factory=list)
    cpu_series: list[float] = field(default_factory=list)  # service cores used, per second
    runqueue_wait_share: float = math.nan  # of wall time the service waited for a CPU
    buffered_max_s: float = math.nan  # audio in the service's ledgers, not yet PERSISTED
    fragment_persist_mean_s: float = math.nan  # fragment written -> PERSISTED (service view)
    system_load: str = ""
    audio_in_window_s: float = math.nan
    held: bool = False
    kept_up: bool = False
    reason: str = ""


def runqueue_wait(pid: int) -> float:
    """Seconds the process's threads have waited, runnable, for a CPU (/proc schedstat)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KVS_INGEST_"))}
    env.update(
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        PYTHONUNBUFFERED="1",
    )
    return env


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not up after {timeout} s")
        time.sleep(0.2)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} ([0-9.eE+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def lag_buckets(text: str) -> dict[float, float]:
    """Cumulative counts of the service's loop-lag probe histogram, by upper bound (s)."""
    pattern = r'^kvs_ingest_event_loop_lag_probe_seconds_bucket\{le="([^"]+)"\} ([0-9.eE+-]+)$'
    return {float(le): float(n) for le, n in re.findall(pattern, text, re.M)}


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound (ms) of the histogram bucket holding quantile `q` of the probes taken
    between two scrapes; inf when it lies beyond the last finite bound, nan without probes."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return math.nan
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * total:
            return bound * 1000
    return math.inf


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


class Processes:
    """The emulator and the service under test for one step; stopped by `close`."""

    def __init__(self, design: str, work: Path) -> None:
        self.design = design
        self.work = work
        data = work / "kvs-data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        env = base_env()
        url_file = work / "emulator.url"
        url_file.unlink(missing_ok=True)
        emulator_log = open(work / "emulator.log", "ab")
        self.emulator = subprocess.Popen(
            [PY, "-c", EMULATOR_CODE, str(free_port()), str(data), str(url_file)],
            env=env,
            stdout=emulator_log,
            stderr=emulator_log,
        )
        deadline = time.monotonic() + 30
        while not url_file.exists() or not url_file.read_text():
            if self.emulator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start; see {work / 'emulator.log'}")
            time.sleep(0.1)
        self.emulator_url = url_file.read_text().strip()
        self.port = free_port()
        log = open(work / f"{design}.log", "ab")
        if design == "new":
            env.update(
                KVS_INGEST_KVS_BACKEND="endpoint",
                KVS_INGEST_KVS_ENDPOINT_URL=self.emulator_url,
                KVS_INGEST_HOST="127.0.0.1",
                KVS_INGEST_PORT=str(self.port),
                KVS_INGEST_FRAGMENT_MS=str(FRAGMENT_MS),
                KVS_INGEST_SESSION_GRACE_SECONDS="2",
                KVS_INGEST_MAX_CONNECTIONS="20000",
                KVS_INGEST_LOG_FORMAT="json",
            )
            cli = Path(PY).with_name("kvs-ingest")
            cmd = [str(cli), "serve"] if cli.exists() else [PY, "-c", SERVE_CODE]
        else:
            cmd = [PY, str(BENCH / "old_design.py"), "--port", str(self.port),
                   "--endpoint", self.emulator_url]  # fmt: skip
        self.service = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        self.url = f"ws://127.0.0.1:{self.port}"
        if design == "new":
            wait_http(f"http://127.0.0.1:{self.port}/healthz")
        else:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", self.port), 1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        self.ps = psutil.Process(self.service.pid)

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        total = t.user + t.system
        if self.design == "old":
            total += t.children_user + t.children_system
        return float(total)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def metrics_text(self) -> str:
        if self.design != "new":
            return ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def close(self) -> None:
        stop_process(self.service, 60)
        stop_process(self.emulator)


def run_step(design: str, n: int, seconds: float, rec_file: Path, rec: Recording,
             work: Path, profile: Path | None = None) -> Step:  # fmt: skip
    """Start fresh processes, drive `n` speakers for the recording, measure, stop.

    With `profile`, py-spy samples the service over the steady window into `profile`
    (folded stacks, for `summarize_profile`) and an SVG flame graph beside it.
    """
    step = Step(design, n, seconds)
    procs = Processes(design, work)
    try:
        time.sleep(1.0)
        rss_base = procs.rss()
        cpu_before = procs.cpu()
        lead = 3.0 + n * 0.02  # time for every socket to connect and its session to open
        start_at = time.time() + lead
        loaders = []
        per = math.ceil(n / SPEAKERS_PER_PROCESS)
        outs = []
        for p in range(per):
            first = p * n // per
            count = (p + 1) * n // per - first
            out = work / f"speakers-{design}-{n}-{p}.json"
            outs.append(out)
            loaders.append(
                subprocess.Popen(
                    [
                        PY,
                        str(BENCH / "speakers.py"),
                        "--url",
                        procs.url,
                        "--chunks",
                        str(rec_file),
                        "--count",
                        str(count),
                        "--first",
                        str(first),
                        "--prefix",
                        f"{design}{n}-",
                        "--start-at",
                        str(start_at),
                        "--out",
                        str(out),
                    ],
                    env=base_env(),
                )
            )
        window = (start_at + WARMUP, start_at + rec.seconds - 0.5)
        samples: list[tuple[float, float, int, float | None, float | None]] = []
        emulator_ps = psutil.Process(procs.emulator.pid)
        emu: list[tuple[float, float]] = []
        waits: list[tuple[float, float]] = []
        lag_hist: list[dict[float, float]] = []  # probe histogram at each scrape in the window
        spy: subprocess.Popen[Any] | None = None
        while any(p.poll() is None for p in loaders):
            now = time.time()
            if profile is not None and spy is None and now >= window[0]:
                spy = start_profiler(procs.service.pid, window[1] - now, profile)
            text = procs.metrics_text()
            lag = metric(text, "kvs_ingest_event_loop_lag_seconds")
            if window[0] <= now <= window[1]:
                lag_hist.append(lag_buckets(text))
            buffered = metric(text, "kvs_ingest_buffered_seconds")
            if buffered is not None and window[0] <= now <= window[1]:
                step.buffered_max_s = max(buffered, 0 if math.isnan(step.buffered_max_s)
                                          else step.buffered_max_s)  # fmt: skip
            count = metric(text, "kvs_ingest_fragment_persist_latency_seconds_count")
            total = metric(text, "kvs_ingest_fragment_persist_latency_seconds_sum")
            if count and total is not None:
                step.fragment_persist_mean_s = total / count
            audio_in = metric(text, "kvs_ingest_audio_in_seconds_total")
            samples.append((now, procs.cpu(), procs.rss(), lag, audio_in))
            if window[0] <= now <= window[1]:
                et = emulator_ps.cpu_times()
                emu.append((now, et.user + et.system))
                waits.append((now, runqueue_wait(procs.service.pid)))
            if now > start_at + rec.seconds + 90:
                for p in loaders:
                    p.kill()
            time.sleep(max(0.0, 1.0 - (time.time() - now)))
        step.system_load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if spy is not None:
            spy.wait(60)
        steady = [s for s in samples if window[0] <= s[0] <= window[1]]
        if len(steady) >= 2:
            span = steady[-1][0] - steady[0][0]
            cpu = steady[-1][1] - steady[0][1]
            # Audio the service decoded in the window (its own counter), not what was sent:
            # a service that falls behind must not look cheaper. The old design has no
            # counter; its figure is per audio second sent.
            first_in, last_in = steady[0][4], steady[-1][4]
            audio = last_in - first_in if first_in is not None and last_in is not None else 0
            step.audio_in_window_s = audio or span * n
            step.cpu_per_audio_s = cpu / step.audio_in_window_s
            step.speakers_per_core = 1 / step.cpu_per_audio_s if cpu > 0 else math.inf
            rss = sorted(s[2] for s in steady)[len(steady) // 2]
            step.rss_base_mib = rss_base / 2**20
            step.rss_mib = rss / 2**20
            step.rss_per_speaker_kib = (rss - rss_base) / n / 1024
            lags = [s[3] * 1000 for s in steady if s[3] is not None]
            step.lag_p99_ms = percentile(lags, 0.99)
            step.lag_max_ms = max(lags) if lags else math.nan
            if len(lag_hist) >= 2 and lag_hist[-1]:
                # every probe in the window (10 a second), not just the scraped last value
                step.lag_p99_ms = bucket_quantile(lag_hist[0], lag_hist[-1], 0.99)
                step.lag_probes = int(lag_hist[-1][math.inf] - lag_hist[0].get(math.inf, 0))
            step.lag_series_ms = [round(x, 1) for x in lags]
            step.cpu_series = [
                round((b[1] - a[1]) / (b[0] - a[0]), 3) for a, b in itertools.pairwise(samples)
            ]
        if len(waits) >= 2:
            step.runqueue_wait_share = (waits[-1][1] - waits[0][1]) / (waits[-1][0] - waits[0][0])
        if len(emu) >= 2:
            step.emulator_cpu_share = (emu[-1][1] - emu[0][1]) / (emu[-1][0] - emu[0][0])
        speakers: list[dict[str, Any]] = []
        for out in outs:
            if out.exists():
                result = json.loads(out.read_text())
                speakers.extend(result["speakers"])
                step.load_cpu_s += result["load_cpu"]
        latencies = [x for s in speakers for x in s["latencies"]]
        step.latency_p50 = percentile(latencies, 0.5)
        step.latency_p99 = percentile(latencies, 0.99)
        step.latency_max = max(latencies) if latencies else math.nan
        step.audio_expected_s = n * rec.decoded_ms / 1000
        if design == "old":
            # The old design falls behind and its ffmpeg children pile up (their CPU counts only
            # once reaped), so its figure is all the CPU of the step, children included, over
            # the audio it got PERSISTED.
            deadline = time.monotonic() + 30
            while procs.ps.children() and time.monotonic() < deadline:
                time.sleep(0.5)
            acked_s = sum(s["last_ack_seq"] + 1 for s in speakers) * rec.seconds / len(rec.chunks)
            step.audio_in_window_s = acked_s
            step.audio_persisted_s = acked_s  # its acks carry no persisted_ms
            step.cpu_per_audio_s = (procs.cpu() - cpu_before) / acked_s if acked_s else math.nan
            step.speakers_per_core = 1 / step.cpu_per_audio_s if acked_s else math.nan
        step.audio_sent_s = sum(s["sent_ms"] for s in speakers) / 1000
        if design == "new":
            step.audio_persisted_s = sum(s["persisted_ms"] for s in speakers) / 1000
        step.chunks_sent = sum(s["sent"] for s in speakers)
        step.chunks_acked = sum(s["last_ack_seq"] + 1 for s in speakers)
        step.max_late_s = max((s["max_late"] for s in speakers), default=math.inf)
        bad = [s for s in speakers if s["close_code"] != 1000 or s["error"]]
        step.errors = len(bad) + (n - len(speakers))
        step.error_samples = sorted({f"{s['close_code']} {s['error']}" for s in bad})[:5]
        lost = step.chunks_acked < n * len(rec.chunks)
        if design == "new":
            lost = lost or any(s["persisted_ms"] < rec.decoded_ms for s in speakers)
        reasons = []
        if step.errors:
            reasons.append(f"{step.errors} speakers with errors")
        if lost:
            reasons.append("audio not all persisted")
        if step.max_late_s > BEHIND_LIMIT:
            reasons.append(f"a speaker fell {step.max_late_s:.1f} s behind real time")
        if not step.latency_p99 <= 2 * LATENCY_TARGET:
            reasons.append(f"acks fell behind real time (p99 {step.latency_p99:.2f} s)")
        # Kept up: nothing lost, no errors, nobody behind; held: and the latency target met.
        step.kept_up = not reasons
        if not step.latency_p99 <= LATENCY_TARGET:
            reasons.append(f"p99 latency {step.latency_p99:.2f} s > {LATENCY_TARGET:.2f} s")
        step.held = not reasons
        if reasons and step.runqueue_wait_share > STARVED:
            reasons.append(
                f"(the service waited for a CPU {step.runqueue_wait_share:.0%} of the time)"
            )
        step.reason = "; ".join(reasons) or "held"
    finally:
        procs.close()
    return step


def start_profiler(pid: int, seconds: float, out: Path) -> subprocess.Popen[Any] | None:
    """py-spy over the service for `seconds`: folded stacks in `out`, a flame graph beside."""
    spy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if spy is None:
        print("py-spy not found; no profile")
        return None
    cmd = [spy, "record", "--nonblocking", "-r", "200", "-p", str(pid), "-d",
           str(max(1, int(seconds))), "-f", "raw", "-o", str(out)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(folded: Path, top: int = 25) -> str:
    """Own time and inclusive time of the hottest functions, from py-spy's folded stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = [re.sub(r" \(.*/", " (", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
    lines = [f"{total} samples; own time:"]
    for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * c / total:5.1f}%  {f}")
    lines.append("inclusive time:")
    for f, c in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * c / total:5.1f}%  {f}")
    return "\n".join(lines)


def describe(step: Step) -> str:
    return (
        f"{step.design:3s} N={step.n:4d}  CPU/audio-s {step.cpu_per_audio_s * 1000:8.3f} ms  "
        f"spk/core {step.speakers_per_core:7.1f}  RSS/spk {step.rss_per_speaker_kib:7.1f} KiB  "
        f"lag p99/max {step.lag_p99_ms:6.1f}/{step.lag_max_ms:6.1f} ms ({step.lag_probes} probes)  "
        f"lat p50/p99/max {step.latency_p50:.2f}/{step.latency_p99:.2f}/{step.latency_max:.2f} s  "
        f"audio sent/persisted {step.audio_sent_s:.1f}/{step.audio_persisted_s:.1f} s  "
        f"late {step.max_late_s:.2f} s  errors {step.errors}  load {step.system_load}  "
        f"cpu-wait {step.runqueue_wait_share:.2f}  "
        f"emulator {step.emulator_cpu_share:.2f} core  buffered max {step.buffered_max_s:.0f} s  "
        f"fragment persist mean {step.fragment_persist_mean_s:.3f} s  "
        f"lag series {step.lag_series_ms}  "
        f"-> {step.reason}"
    )


def make_source(folder: Path, seconds: float) -> Path:
    """Speech (espeak-ng), stereo 48 kHz like a browser microphone track, `seconds` long."""
    folder.mkdir(parents=True, exist_ok=True)
    speech = folder / "speech.wav"
    text = "The quick brown fox jumps over the lazy dog. We measure what ingest costs. " * 3
    subprocess.run(["espeak-ng", "-w", str(speech), text], check=True, capture_output=True)
    src = folder / "source.wav"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-stream_loop", "-1",
         "-i", str(speech), "-t", str(seconds), "-ar", "48000", "-ac", "2", str(src)],
        check=True,
    )  # fmt: skip
    return src


def ffmpeg_cpu(path: Path) -> float:
    """CPU seconds of one ffmpeg decoding `path` to 16 kHz mono s16 (best of 3)."""
    best = math.inf
    for _ in range(3):
        before = psutil.Process().cpu_times()
        subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path),
             "-ar", "16000", "-ac", "1", "-f", "s16le", "-y", os.devnull],
            check=True,
        )  # fmt: skip
        after = psutil.Process().cpu_times()
        used = after.children_user + after.children_system
        best = min(best, used - before.children_user - before.children_system)
    return best


def ffmpeg_floor(work: Path, seconds: float = 120.0) -> float:
    """CPU s per audio s of one long-running ffmpeg decoding the same kind of stream to 16 kHz
    PCM: a `seconds`-long recording, minus ffmpeg's start-up (the header and one chunk)."""
    rec = encode_chunks(make_source(work, seconds))
    whole, start = work / "floor.webm", work / "floor-start.webm"
    whole.write_bytes(b"".join(rec.chunks))
    start.write_bytes(rec.chunks[0])
    return max(0.0, ffmpeg_cpu(whole) - ffmpeg_cpu(start)) / rec.seconds


def plot(steps: list[Step], out_dir: Path, floor: float = math.nan) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for design, label in (
        ("new", "kvs-ingest"),
        ("old", "old design (ffmpeg + PutMedia per chunk)"),
    ):
        pts = [(s.n, s.cpu_per_audio_s * 1000) for s in steps if s.design == design]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    if not math.isnan(floor):
        ax.axhline(floor * 1000, color="grey", linestyle=":", label="ffmpeg decode floor")
        ax.axhline(floor * 2000, color="grey", linestyle="--", label="2x floor (target)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("speakers (N)")
    ax.set_ylabel("service CPU ms per second of audio (per speaker)")
    ax.set_title("CPU per speaker")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "load_cpu.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for design, style in (("new", "-"), ("old", "--")):
        pts = [s for s in steps if s.design == design]
        if pts:
            name = "kvs-ingest" if design == "new" else "old design"
            ax.plot([s.n for s in pts], [s.latency_p50 for s in pts], style, marker="o",
                    label=f"{name} p50")  # fmt: skip
            ax.plot([s.n for s in pts], [s.latency_p99 for s in pts], style, marker="^",
                    label=f"{name} p99")  # fmt: skip
    ax.axhline(LATENCY_TARGET, color="grey", linestyle=":", label="target p99")
    ax.set_xscale("log")
    ax.set_xlabel("speakers (N)")
    ax.set_ylabel("chunk sent -> ack (s)")
    ax.set_title("Chunk to PERSISTED ack latency, speaker's view")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(out_dir / "load_latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


BEGIN = "<!-- load.py: last run begin -->"
END = "<!-- load.py: last run end -->"


def write_results(report: str, path: Path) -> None:
    """Replace the figures between our markers in the "## Load" section; nothing else."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{BEGIN}\n{report.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    elif "## Load" in text:
        head, rest = text.split("## Load", 1)
        heading, _, body = rest.partition("\n")
        text = head + "## Load" + heading + "\n\n" + block + "\n" + body
    else:
        text = text.rstrip() + "\n\n## Load\n\n" + block + "\n"
    path.write_text(text)


def report_md(steps: list[Step], floor: float, command: str, seconds: float) -> str:
    new = [s for s in steps if s.design == "new"]
    old = [s for s in steps if s.design == "old"]
    held = [s for s in new if s.held]
    best = max(held, key=lambda s: s.n) if held else None
    lines = [
        f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `{command}`, "
        f"{seconds:.0f} s of audio per speaker, FRAGMENT_MS={FRAGMENT_MS}.",
        f"Machine: {platform.node()}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}), Python {platform.python_version()}, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB; shared with other test runs "
        "(load average per step below).",
        "",
        "| design | N | CPU ms / audio s | speakers / core | RSS / speaker | loop lag p99 / max "
        "| latency p50 / p99 / max | audio sent / persisted | late | errors | load avg | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        lines.append(
            f"| {s.design} | {s.n} | {s.cpu_per_audio_s * 1000:.3f} | {s.speakers_per_core:.0f} "
            f"| {s.rss_per_speaker_kib:.0f} KiB | {s.lag_p99_ms:.1f} / {s.lag_max_ms:.1f} ms "
            f"| {s.latency_p50:.2f} / {s.latency_p99:.2f} / {s.latency_max:.2f} s "
            f"| {s.audio_sent_s:.1f} / {s.audio_persisted_s:.1f} s | {s.max_late_s:.2f} s "
            f"| {s.errors} | {s.system_load} | {s.reason} |"
        )
    lines.append("")
    lines.append(f"ffmpeg single-process decode floor: {floor * 1000:.3f} ms CPU per audio second.")
    kept = [s.n for s in new if s.kept_up]
    lines.append(
        f"Largest N that held every target: **{best.n if best else 'none'}**; largest N that "
        f"kept up with real time (nothing lost, no errors, acks not falling behind): "
        f"**{max(kept) if kept else 'none'}**."
    )
    if new and old:
        new_cpu = min((s.cpu_per_audio_s for s in new if s.cpu_per_audio_s > 0), default=math.nan)
        old_cpu = min(
            (s.cpu_per_audio_s for s in old if s.cpu_per_audio_s > 0 and s.chunks_acked),
            default=math.nan,
        )
        lines.append(
            f"Old design / kvs-ingest CPU per audio second: {old_cpu / new_cpu:.0f}x "
            f"(cheapest step of each; target >= 60x). kvs-ingest / floor: {new_cpu / floor:.2f}x "
            "(target <= 2x)."
        )
    lines.append("")
    lines.append("![CPU per speaker](load_cpu.png) ![latency](load_latency.png)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps (~3 min in all)")
    parser.add_argument("--seconds", type=float, help="audio per speaker (default 40, quick 15)")
    parser.add_argument("--steps", help="comma-separated N for kvs-ingest")
    parser.add_argument("--old-steps", help="comma-separated N for the old design")
    parser.add_argument("--no-old", action="store_true", help="skip the old design")
    parser.add_argument("--keep-going", action="store_true", help="run every step")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md and plots")
    parser.add_argument("--profile", type=int, help="py-spy the service at this N")
    args = parser.parse_args()
    seconds = args.seconds or (15.0 if args.quick else 40.0)
    default_steps = "50,150,300" if args.quick else "50,100,200,300,400,600,800"
    steps_n = [
        int(x) for x in (args.steps if args.steps is not None else default_steps).split(",") if x
    ]
    old_n = (
        []
        if args.no_old
        else [int(x) for x in (args.old_steps or ("2" if args.quick else "2,4")).split(",")]
    )

    work = Path(tempfile.mkdtemp(prefix="kvs-load-"))
    print(f"work dir {work}; machine: {os.cpu_count()} CPUs; uptime: {os.getloadavg()}")
    rec = encode_chunks(make_source(work, seconds))
    rec_file = work / "recording.pickle"
    rec_file.write_bytes(pickle.dumps(rec))
    print(f"recording: {len(rec.chunks)} chunks, {rec.seconds:.2f} s, "
          f"{sum(map(len, rec.chunks))} bytes, decodes to {rec.decoded_ms} ms")  # fmt: skip
    floor = ffmpeg_floor(work / "floor")
    print(f"ffmpeg floor: {floor * 1000:.3f} ms CPU per audio second")

    steps: list[Step] = []
    for design, ns in (("new", steps_n), ("old", old_n)):
        for n in ns:
            folded = work / f"profile-{n}.txt" if design == "new" and n == args.profile else None
            step = run_step(design, n, seconds, rec_file, rec, work, folded)
            steps.append(step)
            print(describe(step), flush=True)
            if folded is not None and folded.exists():
                print(summarize_profile(folded))
            # The old design cannot meet the targets at any N: run its few steps regardless.
            if design == "new" and not step.kept_up and not args.keep_going:
                break
    held = [s.n for s in steps if s.design == "new" and s.held]
    kept = [s.n for s in steps if s.design == "new" and s.kept_up]
    print(f"largest N that held: {max(held) if held else 'none'}; "
          f"largest N that kept up with real time: {max(kept) if kept else 'none'}")  # fmt: skip
    (work / "steps.json").write_text(json.dumps([asdict(s) for s in steps], indent=1))
    command = "python benchmarks/load.py" + (" --quick" if args.quick else "")
    if not args.no_write:
        plot(steps, BENCH, floor)
        write_results(report_md(steps, floor, command, seconds), BENCH / "RESULTS.md")
    else:
        print(report_md(steps, floor, command, seconds))
    shutil.rmtree(work / "kvs-data", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
