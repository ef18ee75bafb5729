"""`kvs-ingest fetch` (run as a process) reads back exactly what the sink wrote."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

from .conftest import Sink, StartSink, feed, pcm_ramp, t

SAMPLES = Path("/work/shared/kvs-getmedia-samples")
FETCH = [sys.executable, "-m", "kvs_ingest.cli", "fetch"]  # the real `kvs-ingest fetch`


async def fetch(sink: Sink, *args: str) -> tuple[int, str, str]:
    """The fetch command as a separate process (the emulator keeps serving on our loop)."""
    env = {**os.environ, "KVS_INGEST_KVS_BACKEND": "endpoint"}
    env["KVS_INGEST_KVS_ENDPOINT_URL"] = sink.emulator.url
    proc = await asyncio.create_subprocess_exec(
        *FETCH, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), t(60))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def wav_pcm(path: Path) -> bytes:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        return w.readframes(w.getnframes())


async def test_fetch_returns_exactly_the_samples_written(
    start_sink: StartSink, tmp_path: Path
) -> None:
    """A 4.5 s session fetched with ListFragments + GetMediaForFragmentList is sample-exact."""
    pcm = pcm_ramp(4.5, seed=7)
    async with start_sink() as sink:
        _, speaker = await sink.speaker("fetch-me")
        await feed(speaker, pcm)
        assert await speaker.finish(t(20))
        code, out, err = await fetch(sink, "--session", "fetch-me", "-o", str(tmp_path / "a.wav"))
        assert code == 0, err
        code2, _, err2 = await fetch(
            sink, "--session", "fetch-me", "--get-media", "-o", str(tmp_path / "b.wav"),
            "--endpoint-url", sink.emulator.url,
        )  # fmt: skip
    assert wav_pcm(tmp_path / "a.wav") == pcm
    assert "5 fragments" in out and "gap" not in out
    assert code2 == 0, err2
    assert wav_pcm(tmp_path / "b.wav") == pcm


async def test_gaps_are_printed_and_filled_only_on_request(
    start_sink: StartSink, tmp_path: Path
) -> None:
    """Two speakers 1.2 s apart: the gap is reported; --fill-gaps inserts that much silence."""
    first, second = pcm_ramp(1.0, seed=1), pcm_ramp(1.0, seed=2)
    async with start_sink() as sink:
        session, one = await sink.speaker("gappy")
        await one.write(first)
        assert await one.finish(t(20))
        one.detach()
        end_before = session.end_ms  # ahead of the wall clock: the audio came fast
        await asyncio.sleep(1.2 + max(0.0, (end_before - time.time_ns() // 1_000_000) / 1000))
        _, two = await sink.speaker("gappy")
        gap_ms = session.end_ms - end_before
        await two.write(second)
        assert await two.finish(t(20))
        code, out, _ = await fetch(sink, "--session", "gappy", "-o", str(tmp_path / "c.wav"))
        code2, out2, _ = await fetch(
            sink, "--session", "gappy", "--fill-gaps", "-o", str(tmp_path / "f.wav")
        )
    assert code == code2 == 0
    assert wav_pcm(tmp_path / "c.wav") == first + second
    assert "gap of" in out and "filled with silence" in out2
    filled = wav_pcm(tmp_path / "f.wav")
    silence = len(filled) - len(first) - len(second)
    assert gap_ms >= 1200
    assert abs(silence / 32 - gap_ms) <= 2
    assert filled[: len(first)] == first and filled[-len(second) :] == second


@pytest.mark.parametrize(
    ("name", "expect"),
    [("output_get_media.mkv", "V_MPEG4/ISO/AVC"), ("test_mixed_tags.mkv", "V_MS/VFW/FOURCC")],
)
def test_fetch_reports_video_getmedia_samples_clearly(
    name: str, expect: str, tmp_path: Path
) -> None:
    """Real KVS GetMedia output of a video stream: exit 1 saying there is no PCM audio track."""
    done = subprocess.run(
        [*FETCH, "--input", str(SAMPLES / name), "-o", str(tmp_path / "v.wav")],
        capture_output=True, text=True, timeout=t(60),
    )  # fmt: skip
    assert done.returncode == 1
    assert "no 16 kHz mono PCM audio track" in done.stderr and expect in done.stderr
    assert not (tmp_path / "v.wav").exists()


async def test_fetch_reads_the_embedded_emulator_data_dir(
    start_sink: StartSink, tmp_path: Path
) -> None:
    """With no KVS configured, fetch serves the embedded emulator's data directory itself."""
    pcm = pcm_ramp(2.0, seed=11)
    async with start_sink() as sink:
        _, speaker = await sink.speaker("embedded")
        await feed(speaker, pcm)
        assert await speaker.finish(t(20))
        data_dir = sink.emulator.config.data_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KVS_INGEST_"))}
    env["KVS_INGEST_EMBEDDED_DATA_DIR"] = str(data_dir)
    done = await asyncio.to_thread(
        subprocess.run,
        [*FETCH, "--session", "embedded", "-o", str(tmp_path / "e.wav")],
        capture_output=True, text=True, timeout=t(60), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert wav_pcm(tmp_path / "e.wav") == pcm
