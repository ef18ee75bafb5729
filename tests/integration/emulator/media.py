"""Test media: PutMedia bodies from our MKV writer and from ffmpeg, and a splitter for GetMedia
output (one complete MKV per fragment)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvs_ingest.mkv import ID, EbmlReader, Leaf, MasterEnd, MasterStart
from kvs_ingest.mkv import writer as w
from kvs_ingest.mkv.reader import read_string, read_uint

RATE = 16000


def sine(seconds: float, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * freq * t) * 8000).astype("<i2").tobytes()


def writer_chunks(
    t0_ms: int,
    pcm: bytes,
    *,
    fragment_ms: int = 1000,
    block_ms: int = 200,
    tags: list[tuple[str, str]] | None = None,
    end_of_fragment: bool = False,
) -> list[bytes]:
    """A PutMedia body as our writer builds it: header, then per fragment optional Tags and an
    unknown-size Cluster of SimpleBlocks, one chunk per block."""
    chunks = [w.ebml_header() + w.segment_header() + w.info(b"kvs-ingest-test!") + w.tracks()]
    block_bytes = RATE * block_ms // 1000 * 2
    per_fragment = fragment_ms // block_ms
    blocks = [pcm[i : i + block_bytes] for i in range(0, len(pcm), block_bytes)]
    for f in range(0, len(blocks), per_fragment):
        head = w.tags(tags) if tags else b""
        chunks.append(head + w.cluster_header(t0_ms + f * block_ms))
        for b, payload in enumerate(blocks[f : f + per_fragment]):
            chunks.append(w.simple_block(1, b * block_ms, payload))
    if end_of_fragment:
        chunks.append(w.tags([("AWS_KINESISVIDEO_END_OF_FRAGMENT", "")]))
    return chunks


def ffmpeg_mkv(seconds: float = 3.0) -> bytes:
    """PCM s16le 16 kHz mono muxed by ffmpeg's Matroska muxer, 1 s clusters."""
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"sine=f=440:d={seconds}",
         "-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le", "-f", "matroska",
         "-cluster_time_limit", "1000", "pipe:1"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip


def ffmpeg_pcm(path: Path) -> bytes:
    """The audio of an MKV file decoded by ffmpeg to s16le 16 kHz mono."""
    return subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", "16000",
         "pipe:1"],
        check=True, capture_output=True, timeout=60,
    ).stdout  # fmt: skip


def ffprobe_audio(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    streams = json.loads(out)["streams"]
    assert len(streams) == 1
    return streams[0]  # type: ignore[no-any-return]


def mkvinfo(path: Path) -> str:
    result = subprocess.run(
        ["mkvinfo", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@dataclass
class OutFragment:
    """One fragment of GetMedia output: top-level element order and the tags around it."""

    order: list[str] = field(default_factory=list)
    tags: list[dict[str, str]] = field(default_factory=list)
    cluster_timecode: int | None = None
    pcm: bytearray = field(default_factory=bytearray)


_NAMES = {ID.INFO: "Info", ID.TRACKS: "Tracks", ID.TAGS: "Tags", ID.CLUSTER: "Cluster"}


def split_fragments(data: bytes) -> list[OutFragment]:
    """GetMedia output fragment by fragment (each starts with an EBML header)."""
    reader = EbmlReader()
    frags: list[OutFragment] = []
    path: list[int] = []
    name = ""
    for event in [*reader.feed(data), *reader.close()]:
        if isinstance(event, MasterStart):
            if event.id == ID.EBML:
                frags.append(OutFragment())
            if path == [ID.SEGMENT] and event.id in _NAMES:
                frags[-1].order.append(_NAMES[ID(event.id)])
                if event.id == ID.TAGS:
                    frags[-1].tags.append({})
            path.append(event.id)
        elif isinstance(event, MasterEnd):
            path.pop()
        elif isinstance(event, Leaf):
            if event.id == ID.TAG_NAME:
                name = read_string(event.data)
            elif event.id == ID.TAG_STRING:
                frags[-1].tags[-1][name] = read_string(event.data)
            elif event.id == ID.TIMECODE and path[-1] == ID.CLUSTER:
                frags[-1].cluster_timecode = read_uint(event.data)
            elif event.id == ID.SIMPLE_BLOCK:
                frags[-1].pcm += event.data[4:]
    return frags
