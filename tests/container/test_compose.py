"""The shipped docker-compose.yml end to end: both health checks pass, speech streamed with
`kvs-ingest speak` through the published port comes back from the `kvs` container with
`kvs-ingest fetch` and matches the original, and `docker-compose stop` drains the service
(speaker told 1012, sessions flushed) and it exits 0 well inside the grace period.

The tests in this module share one stack and run in file order; the stop test comes last.
Traffic: the test talks to 127.0.0.1 (the published port) and `docker-compose exec`; the
containers talk over the compose project's own bridge network.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.container.conftest import DRAIN_SECONDS, REPO, Stack, scaled, sh

# The first test also pays for the engine, the base image and the build on a fresh machine.
pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

# About 7 s of speech: under the service's 10 s burst allowance, so `--speed 2` is not 4429.
SPEECH = (
    "Good evening and welcome. This talk is being translated live, "
    "so please speak clearly into the microphone."
)
KVS_CLI = str(Path(sys.executable).parent / "kvs-ingest")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few seconds of real speech (espeak-ng), as a 22.05 kHz WAV."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    sh("espeak-ng", "-v", "en-us", "-s", "165", "-w", str(path), SPEECH)
    return path


@pytest.fixture(scope="module")
def long_speech(speech: Path) -> Path:
    """The speech three times over, for the drain test (a speaker still talking at SIGTERM)."""
    path = speech.with_name("long.wav")
    sh("sox", str(speech), str(speech), str(speech), str(path))
    return path


@pytest.fixture(scope="module")
def url(stack: Stack) -> str:
    stack.wait_healthy("kvs", "ingest", timeout=180)
    host, port = stack.published("ingest", 8080)
    assert host == "127.0.0.1"
    return f"http://127.0.0.1:{port}"


def reference_pcm(path: Path) -> np.ndarray:
    """The file as 16 kHz mono s16, decoded by ffmpeg (an oracle outside our code)."""
    raw = sh(
        "ffmpeg", "-nostdin", "-v", "error", "-i", str(path),
        "-ac", "1", "-ar", "16000", "-f", "s16le", "-",
    ).stdout  # fmt: skip
    return np.frombuffer(raw, dtype="<i2").astype(np.float64)


def fetched_pcm(path: Path) -> np.ndarray:
    """A fetched WAV, after ffprobe confirms it is what DESIGN.md §4.5 promises."""
    command = ("ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path))
    probe = json.loads(sh(*command).stdout)
    (stream,) = probe["streams"]
    assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == (
        "pcm_s16le",
        "16000",
        1,
    )
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)


def envelope(pcm: np.ndarray, window: int = 320) -> np.ndarray:
    """RMS per 20 ms: what a listener hears as the shape of speech, robust to Opus."""
    usable = len(pcm) // window * window
    return np.sqrt((pcm[:usable].reshape(-1, window) ** 2).mean(axis=1))


def best_match(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Highest normalised correlation of the envelopes over alignments of up to ±2 s."""
    a, b = envelope(reference), envelope(candidate)
    a = (a - a.mean()) / (a.std() or 1)
    b = (b - b.mean()) / (b.std() or 1)
    best = -1.0
    for lag in range(-100, 101):
        x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
        n = min(len(x), len(y))
        if n > 50:
            best = max(best, float(np.dot(x[:n], y[:n]) / n))
    return best


def speak(url: str, session: str, path: Path, *, speed: float) -> subprocess.Popen[str]:
    ws = url.replace("http://", "ws://")
    command = [KVS_CLI, "speak", str(path), "--url", ws, "--session", session]
    return subprocess.Popen(
        [*command, "--speed", str(speed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def fetch(stack: Stack, session: str, dest: Path, *, service: str = "kvs") -> np.ndarray:
    """`kvs-ingest fetch` inside the compose project, the WAV copied out with `docker cp`.

    service="kvs": exec in the running emulator container (what the acceptance asks);
    service="fetch": `docker-compose run --rm fetch ...`, the command the README gives users.
    Both write into the kvs-data volume, which `docker cp` reads through the kvs container.
    """
    inside = f"/data/{session}-{service}.wav"
    args = ("--session", session, "-o", inside)
    if service == "kvs":
        stack.compose("exec", "-T", "kvs", "kvs-ingest", "fetch", *args,
                      "--endpoint-url", "http://127.0.0.1:4567", timeout=120)  # fmt: skip
    else:
        stack.compose("--profile", "tools", "run", "--rm", "-T", service, *args, timeout=120)
    sh("docker", "cp", f"{stack.container('kvs')}:{inside}", str(dest))
    return fetched_pcm(dest)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=scaled(10)) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_both_services_become_healthy(stack: Stack, url: str) -> None:
    """`kvs` and `ingest` pass their Docker health checks; ingest is published on loopback."""
    assert stack.health("kvs") == "healthy"
    assert stack.health("ingest") == "healthy"
    assert stack.state("ingest")["Running"] is True


def test_probes_and_demo_page_through_the_published_port(url: str) -> None:
    """/healthz and /readyz answer 200 and the demo page is served at / (DEMO_PAGE=1)."""
    status, body = get(f"{url}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = get(f"{url}/readyz")
    assert status == 200, body
    status, page = get(f"{url}/")
    assert status == 200 and b"<html" in page.lower()


def test_auth_none_is_announced_loudly(stack: Stack, url: str) -> None:
    """With AUTH_MODE=none the service logs a warning saying anyone can speak."""
    events = [json.loads(line) for line in stack.raw_logs("ingest") if line.startswith("{")]
    warnings = [e for e in events if e.get("event") == "auth_disabled"]
    assert warnings and warnings[0]["level"] == "warning"


def test_speech_round_trip_through_compose(
    stack: Stack, url: str, speech: Path, tmp_path: Path
) -> None:
    """speak → published port → ingest → kvs emulator → fetch in the kvs container = the speech."""
    process = speak(url, "compose-roundtrip", speech, speed=2)
    out, err = process.communicate(timeout=scaled(120))
    assert process.returncode == 0, out + err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["close_code"] == 1000
    reference = reference_pcm(speech)
    got = fetch(stack, "compose-roundtrip", tmp_path / "roundtrip.wav")
    # Everything sent is there (fragments are whole seconds; allow one of slack either way).
    by_run = fetch(stack, "compose-roundtrip", tmp_path / "run.wav", service="fetch")
    assert np.array_equal(by_run, got)  # `docker compose run --rm fetch` reads the same audio
    match = best_match(reference, got)
    print(f"round trip: sent {len(reference) / 16000:.2f} s, fetched {len(got) / 16000:.2f} s, "
          f"envelope correlation {match:.3f}")  # fmt: skip
    assert abs(len(got) - len(reference)) / 16000 < 1.0, (len(got), len(reference))
    assert match > 0.9
    assert best_match(reference, got[::-1]) < 0.6  # the oracle tells speech from its reverse


def test_docker_compose_stop_drains_and_exits_zero(
    stack: Stack, url: str, long_speech: Path, tmp_path: Path
) -> None:
    """SIGTERM mid-speech: speaker gets 1012, the drain runs, the service exits 0 in time."""
    process = speak(url, "compose-drain", long_speech, speed=1)
    assert process.stdout is not None
    seen: list[dict[str, object]] = []
    while not any(m.get("type") == "ack" for m in seen):  # wait for audio persisted in KVS
        line = process.stdout.readline()
        assert line, (
            f"speaker ended before any ack: {seen} {process.stderr.read() if process.stderr else ''}"
        )
        seen.append(json.loads(line))
    started = time.monotonic()
    stack.compose("stop", "ingest", timeout=120)
    stop_seconds = time.monotonic() - started
    out, err = process.communicate(timeout=scaled(60))
    state = stack.state("ingest")
    assert state["Running"] is False
    assert state["ExitCode"] == 0 and state["OOMKilled"] is False, stack.logs("ingest")[-4000:]
    print(f"docker-compose stop ingest: {stop_seconds:.2f} s")
    assert stop_seconds < DRAIN_SECONDS + 10  # not the 45 s SIGKILL deadline
    assert "1012" in err, (out, err)

    events = [json.loads(line) for line in stack.raw_logs("ingest") if line.startswith("{")]
    names = [e.get("event") for e in events]
    assert any(e.get("event") == "signal" and e.get("signal") == "SIGTERM" for e in events)
    for step in ("draining", "drained", "stopped"):
        assert step in names, names[-20:]
    assert names.index("draining") < names.index("drained") < names.index("stopped")

    # What the speaker was told is persisted is in KVS, read back from the kvs container.
    messages = seen + [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    acks = [m for m in messages if m.get("type") == "ack"]
    got = fetch(stack, "compose-drain", tmp_path / "drain.wav")
    print(f"drain: last persisted_ms acked {acks[-1].get('persisted_ms')}, "
          f"fetched {len(got) / 16000:.2f} s")  # fmt: skip
    assert len(got) / 16000 >= max(a.get("persisted_ms", 0) for a in acks) / 1000 - 0.5
    assert len(got) / 16000 >= 1.0
