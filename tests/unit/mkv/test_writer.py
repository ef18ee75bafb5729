"""The writer's output is checked by parsers that are not ours: ffprobe/ffmpeg and mkvinfo."""

from __future__ import annotations

import json
import math
import struct
import subprocess
from pathlib import Path

import pytest

from kvs_ingest.mkv import ID, writer

RATE = 16000


def _tone(seconds: float, freq: float = 1000.0) -> bytes:
    n = int(seconds * RATE)
    return struct.pack(
        f"<{n}h", *(int(12000 * math.sin(2 * math.pi * freq * i / RATE)) for i in range(n))
    )


def _pcm_mkv(pcm: bytes, *, start_ms: int = 1_764_050_000_000, fragment_ms: int = 1000,
             block_ms: int = 20, tagged: bool = True) -> bytes:  # fmt: skip
    """A PutMedia-shaped body: header once, then one unknown-size Cluster per fragment."""
    out = [
        writer.ebml_header(),
        writer.segment_header(),
        writer.info(b"\x01" * 16),
        writer.tracks(writer.AudioTrack()),
    ]
    block_bytes = RATE * block_ms // 1000 * 2
    frag_bytes = RATE * fragment_ms // 1000 * 2
    for f_start in range(0, len(pcm), frag_bytes):
        if tagged:
            out.append(writer.tags([("MimeType", "audio/L16;rate=16000;channels=1")]))
        out.append(writer.cluster_header(start_ms + f_start // 2 * 1000 // RATE))
        fragment = pcm[f_start : f_start + frag_bytes]
        for b_start in range(0, len(fragment), block_bytes):
            rel = b_start // 2 * 1000 // RATE
            out.append(writer.simple_block(1, rel, fragment[b_start : b_start + block_bytes]))
    return b"".join(out)


def test_ffprobe_reads_pcm_track(tmp_path: Path) -> None:
    """ffprobe sees one 16 kHz mono s16le PCM stream of the written duration."""
    path = tmp_path / "a.mkv"
    path.write_bytes(_pcm_mkv(_tone(3.0)))
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    info = json.loads(out)
    (stream,) = info["streams"]
    assert stream["codec_name"] == "pcm_s16le"
    assert int(stream["sample_rate"]) == 16000
    assert stream["channels"] == 1


def test_ffmpeg_decodes_the_same_samples(tmp_path: Path) -> None:
    """ffmpeg decodes exactly the PCM that went into the SimpleBlocks."""
    pcm = _tone(2.5, 440.0)
    path = tmp_path / "a.mkv"
    path.write_bytes(_pcm_mkv(pcm))
    decoded = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-c:a", "pcm_s16le", "-"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    assert decoded == pcm


def test_mkvinfo_accepts_structure(tmp_path: Path) -> None:
    """mkvinfo parses the file without errors and sees the KVS track layout and clusters."""
    path = tmp_path / "a.mkv"
    path.write_bytes(_pcm_mkv(_tone(3.0)))
    result = subprocess.run(["mkvinfo", "-v", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    assert "A_PCM/INT/LIT" in text
    assert "Sampling frequency: 16000" in text
    assert text.count("|+ Cluster") == 3
    assert "Error" not in text


def test_vint_sizes_round_trip() -> None:
    """Sizes encode in the shortest vint, reserve all-ones, and honour a forced width."""
    assert writer.encode_size(0) == b"\x80"
    assert writer.encode_size(126) == b"\xfe"
    assert writer.encode_size(127) == b"\x40\x7f"  # 0xFF would mean "unknown"
    assert writer.encode_size(5, width=8) == b"\x01\x00\x00\x00\x00\x00\x00\x05"
    with pytest.raises(ValueError):
        writer.encode_size(1 << 56)


def test_simple_block_layout() -> None:
    """A SimpleBlock is id, size, track vint 0x81, int16 timecode, key-frame flag, payload."""
    block = writer.simple_block(1, -2, b"\x01\x02")
    assert block == b"\xa3\x86\x81\xff\xfe\x80\x01\x02"
    with pytest.raises(ValueError):
        writer.simple_block(1, 40000, b"")


def test_ids_encode_with_their_marker() -> None:
    """Element ids are written as is, 1 to 4 bytes."""
    assert writer.encode_id(ID.SIMPLE_BLOCK) == b"\xa3"
    assert writer.encode_id(ID.SEGMENT) == b"\x18\x53\x80\x67"
