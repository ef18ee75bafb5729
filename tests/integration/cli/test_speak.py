"""Acceptance: `kvs-ingest speak` of a 30 s speech file into `kvs-ingest serve` (embedded
emulator), every chunk acked, and the audio in KVS equal to ffmpeg's decode of the file."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kvs_ingest.emulator import Emulator, EmulatorConfig

from ..server.chain import correlation, pcm_of, read_stream
from .procs import CMD, clean_env, start_serve, t

SECRET = "speak-test-secret-speak-test-secret-0123"
TEXT = (
    "Kinesis video streams keep every fragment of this talk. The quick brown fox jumps over "
    "the lazy dog, and then it jumps back again. One, two, three, four, five, six, seven. "
)


@pytest.fixture(scope="module")
def speech_30s(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 30 s of espeak-ng speech, 22.05 kHz mono WAV."""
    folder = tmp_path_factory.mktemp("speech")
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), TEXT * 4], check=True, timeout=60)
    out = folder / "speech30.wav"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(raw), "-t", "30",
         "-af", "apad=whole_dur=30", str(out)],
        check=True, timeout=60,
    )  # fmt: skip
    return out


def ffmpeg_16k(path: Path) -> np.ndarray:
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(path), "-ar", "16000",
         "-ac", "1", "-f", "s16le", "-"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    return np.frombuffer(done.stdout, np.int16)


async def run_cmd(*args: str, env: dict[str, str], within: float) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CMD, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), t(within))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_speak_30s_into_serve_embedded(tmp_path: Path, speech_30s: Path) -> None:
    """speak → serve (embedded emulator) → fetch: all chunks acked, exits 0; the fetched WAV matches
    the ffmpeg decode of the file (length ± 20 ms, correlation ≥ 0.99)."""
    data_dir = tmp_path / "kvs-data"
    env = clean_env(
        KVS_INGEST_AUTH_MODE="hs256", KVS_INGEST_AUTH_SECRET=SECRET,
        KVS_INGEST_EMBEDDED_DATA_DIR=str(data_dir),
    )  # fmt: skip
    serve = await start_serve(env)
    try:
        first = serve.lines[0]
        assert first.get("backend") == "embedded", first
        code, out, err = await run_cmd(
            "speak", str(speech_30s), "--url", serve.ws, "--session", "accept", "--speed", "1.5",
            env=env, within=120,
        )  # fmt: skip
    finally:
        assert await serve.stop() == 0
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["close_code"] == 1000
    assert summary["sent"] == summary["chunks"] >= 100
    acks = [m for m in lines if m.get("type") == "ack"]
    assert acks[-1]["seq"] == summary["chunks"] - 1
    # `kvs-ingest fetch` reads the embedded emulator's data dir back into a WAV.
    wav = tmp_path / "out.wav"
    code, _, err = await run_cmd(
        "fetch", "--session", "accept", "-o", str(wav), env=env, within=120
    )
    assert code == 0, err
    got = ffmpeg_16k(wav)  # ffmpeg reads the WAV: an outside check of its header too
    want = ffmpeg_16k(speech_30s)
    assert abs(len(got) - len(want)) <= 320, (len(got), len(want))
    assert correlation(got, want) >= 0.99
    # The same audio straight from the stored fragments, through boto3.
    async with Emulator(EmulatorConfig(data_dir=data_dir)) as emu:
        stored = pcm_of(await read_stream(emu.url, "session-accept"))
    assert np.array_equal(stored, got)
