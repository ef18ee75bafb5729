"""`kvs-ingest speak`'s recorder imitation, checked with ffprobe, and its exit on an error close."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kvs_ingest.client.speak import chunk, encode
from kvs_ingest.server.auth import mint_token

from ..server.conftest import NoSessions, running_server
from .procs import clean_env
from .test_speak import run_cmd

EBML_MAGIC = b"\x1a\x45\xdf\xa3"


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("speak") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(out), "One two three, testing the recorder."],
                   check=True, timeout=60)  # fmt: skip
    return out


def ffprobe(path: Path, *entries: str) -> dict:
    done = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *entries, str(path)],
        capture_output=True, check=True, timeout=60, text=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_webm_is_opus_48k_in_60ms_packets_cut_like_media_recorder(
    speech: Path, tmp_path: Path
) -> None:
    """WebM/Opus 48 kHz with 60 ms packets (ffprobe); only the first 250 ms chunk has the header,
    the chunks join back to the stream, and there is one per timeslice."""
    data, seconds = encode(speech, "webm")
    out = tmp_path / "rec.webm"
    out.write_bytes(data)
    stream = ffprobe(out, "-show_streams")["streams"][0]
    assert (stream["codec_name"], stream["sample_rate"]) == ("opus", "48000")
    packets = ffprobe(out, "-show_packets", "-select_streams", "a")["packets"]
    durations = {round(float(p["duration_time"]), 3) for p in packets[:-1]}
    assert durations == {0.06}
    chunks = chunk(data, seconds, "webm", 250)
    assert b"".join(c.data for c in chunks) == data
    assert len(chunks) == -(-int(seconds * 1000) // 250)
    assert chunks[0].data.startswith(EBML_MAGIC)
    assert not any(EBML_MAGIC in c.data for c in chunks[1:])


def test_ogg_and_pcm_encodings_decode_to_the_same_length(speech: Path, tmp_path: Path) -> None:
    """Ogg/Opus and raw PCM cover the same duration as the WebM recording (± one packet)."""
    _, webm_s = encode(speech, "webm")
    ogg, ogg_s = encode(speech, "ogg")
    pcm, pcm_s = encode(speech, "pcm_s16le")
    assert abs(ogg_s - webm_s) < 0.001 and abs(pcm_s - webm_s) < 0.06
    (tmp_path / "rec.ogg").write_bytes(ogg)
    assert ffprobe(tmp_path / "rec.ogg", "-show_streams")["streams"][0]["codec_name"] == "opus"
    assert len(pcm) % 2 == 0


async def test_speak_exits_1_on_an_error_close(speech: Path) -> None:
    """A refused token: speak prints the error and exits 1 without claiming success."""
    secret = "speak-client-secret-speak-client-secret-01"
    async with running_server(NoSessions(), auth_mode="hs256", auth_secret=secret) as srv:
        code, out, err = await run_cmd(
            "speak", str(speech), "--url", f"ws://127.0.0.1:{srv.server.port}",
            "--session", "s1", "--speed", "0", "--token", mint_token(secret, "other"),
            env=clean_env(), within=60,
        )  # fmt: skip
    assert code == 1
    assert "4403" in err
    assert json.loads(out.splitlines()[-1])["close_code"] == 4403
