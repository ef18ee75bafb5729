"""`kvs-ingest decode` as a user runs it: files in, a WAV out that ffprobe reads, errors named."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import pytest

from tests.unit.media.corpus import TIME_FACTOR, Stream, browser_streams

DECODE = [sys.executable, "-m", "kvs_ingest.media.cli"]


def run_decode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DECODE, *args], capture_output=True, text=True, timeout=120 * TIME_FACTOR
    )


def write_chunks(stream: Stream, folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, chunk in enumerate(stream.chunks):
        path = folder / f"chunk-{i:04d}.bin"
        path.write_bytes(chunk)
        paths.append(str(path))
    return paths


def ffprobe_audio(path: Path) -> tuple[str, str, str, float]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=codec_name,sample_rate,channels:format=duration", "-of", "csv=p=0:nk=1", str(path)],
        capture_output=True, text=True, check=True, timeout=60 * TIME_FACTOR,
    ).stdout.split()  # fmt: skip
    codec, rate, channels = out[0].split(",")
    return codec, rate, channels, float(out[1])


def test_decode_writes_a_16k_mono_wav(ffmpeg_streams: dict[str, Stream], tmp_path: Path) -> None:
    """Chunk files of a restarted WebM recording become one 16 kHz mono s16 WAV."""
    stream = ffmpeg_streams["restarted-webm"]
    out = tmp_path / "out.wav"
    done = run_decode(*write_chunks(stream, tmp_path / "chunks"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 segment(s)" in done.stdout
    codec, rate, channels, duration = ffprobe_audio(out)
    assert (codec, rate, channels) == ("pcm_s16le", "16000", "1")
    with wave.open(str(out)) as wav:
        assert wav.getnframes() == int(done.stdout.split(": ")[1].split()[0])
    assert 7.5 < duration < 8.5  # two recordings of the 4 s source


def test_decode_raw_pcm_needs_its_rate(ffmpeg_streams: dict[str, Stream], tmp_path: Path) -> None:
    """Raw PCM decodes with --format/--rate/--channels and keeps its duration."""
    stream = ffmpeg_streams["raw-s16-22k"]
    out = tmp_path / "raw.wav"
    files = write_chunks(stream, tmp_path / "raw")
    done = run_decode(*files, "--format", "pcm_s16le", "--rate", "22050", "--channels", "2",
                      "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert abs(ffprobe_audio(out)[3] - 4.0) < 0.01


def test_decode_names_the_file_that_failed(
    ffmpeg_streams: dict[str, Stream], tmp_path: Path
) -> None:
    """A corrupt chunk exits 1 with the file's name and keeps the audio decoded before it."""
    stream = ffmpeg_streams["ogg-opus"]
    files = write_chunks(stream, tmp_path / "ogg")
    chunk = Path(files[2]).read_bytes()
    assert b"OggS" in chunk
    Path(files[2]).write_bytes(chunk.replace(b"OggS", b"OggX", 1))  # a broken page header
    out = tmp_path / "partial.wav"
    done = run_decode(*files, "-o", str(out))
    assert done.returncode == 1
    assert files[2] in done.stderr and "lost Ogg page sync" in done.stderr
    assert ffprobe_audio(out)[3] > 0.5


def test_decode_refuses_a_wav(tmp_path: Path) -> None:
    """A WAV file is refused with a message saying what it is."""
    src = tmp_path / "in.wav"
    with wave.open(str(src), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\x00\x00" * 1600)
    done = run_decode(str(src), "-o", str(tmp_path / "out.wav"))
    assert done.returncode == 1
    assert "WAV" in done.stderr


def _one_per_kind(streams: list[Stream]) -> list[Stream]:
    """One recording per browser and container, plus every restarted one (the CLI's job is the
    same for all; the oracle tests cover every recording through the API)."""
    chosen: dict[tuple[str, str, bool], Stream] = {}
    for stream in streams:
        key = (stream.name.split("/")[0], stream.format, bool(stream.restarts))
        chosen.setdefault(key, stream)
    return list(chosen.values())


BROWSER = _one_per_kind(browser_streams())


@pytest.mark.skipif(not BROWSER, reason="no browser corpus under tests/data/browser yet")
def test_decode_browser_recordings(tmp_path: Path) -> None:
    """Recorded browser chunk folders decode from the command line, restarts included."""
    for stream in BROWSER:
        folder = Path(__file__).resolve().parents[2] / "data" / "browser" / stream.name
        files = sorted(str(p) for p in folder.glob("chunk-*.bin"))
        done = run_decode(*files, "-o", str(tmp_path / "out.wav"))
        assert done.returncode == 0, (stream.name, done.stderr)
        assert f"{len(stream.restarts) + 1} segment(s)" in done.stdout


def test_kvs_ingest_decode_entry_point(ffmpeg_streams: dict[str, Stream], tmp_path: Path) -> None:
    """The user's command, `kvs-ingest decode`, runs the same tool."""
    stream = ffmpeg_streams["firefox-like-webm"]
    out = tmp_path / "entry.wav"
    done = subprocess.run(
        [sys.executable, "-m", "kvs_ingest", "decode", *write_chunks(stream, tmp_path / "c"),
         "-o", str(out)],
        capture_output=True, text=True, timeout=120 * TIME_FACTOR,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "of webm, 1 segment(s)" in done.stdout
    assert ffprobe_audio(out)[:3] == ("pcm_s16le", "16000", "1")
