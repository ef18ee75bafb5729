"""FragmentWriter: its output checked by ffprobe/ffmpeg/mkvinfo and by our own reader."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs_ingest.kvs.fragments import END_OF_FRAGMENT, FragmentWriter, connection_header
from kvs_ingest.mkv import ID, EbmlReader, Leaf, parse_block, read_string, read_uint

START = 1_764_050_000_123
UID = bytes(range(16))


def tone(seconds: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    x = 8000 * np.sin(2 * np.pi * 440 * t) + rng.integers(-500, 500, n)
    return x.astype("<i2").tobytes()


def body(pcm: bytes, *, splits: list[int] | None = None, fragment_ms: int = 1000) -> bytes:
    writer = FragmentWriter("sess-1", start_ms=START, fragment_ms=fragment_ms)
    out = [connection_header(UID)]
    pos = 0
    for cut in [*(splits or []), len(pcm)]:
        for piece in writer.write(pcm[pos:cut]):
            out.append(piece.data)
        pos = cut
    out += [p.data for p in writer.close()]
    out.append(END_OF_FRAGMENT)
    return b"".join(out)


def parse(data: bytes) -> dict[str, list]:
    """Clusters (timecode, [(rel, flags, payload)]) and tags, read with our EbmlReader."""
    reader = EbmlReader()
    clusters: list[tuple[int, list[tuple[int, int, bytes]]]] = []
    tags: list[str] = []
    for ev in reader.feed(data) + reader.close():
        if isinstance(ev, Leaf) and ev.id == ID.TIMECODE:
            clusters.append((read_uint(ev.data), []))
        elif isinstance(ev, Leaf) and ev.id == ID.SIMPLE_BLOCK:
            block = parse_block(ev.data)
            clusters[-1][1].append((block.timecode, block.flags, block.frames[0]))
        elif isinstance(ev, Leaf) and ev.id == ID.TAG_NAME:
            tags.append(read_string(ev.data))
    return {"clusters": clusters, "tags": tags}


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg missing")


@needs_ffmpeg
def test_ffmpeg_decodes_exactly_the_samples_written(tmp_path: Path) -> None:
    """ffmpeg reads the body as 16 kHz mono s16 PCM and returns the very samples we wrote."""
    pcm = tone(3.3)
    path = tmp_path / "body.mkv"
    path.write_bytes(body(pcm))
    probe = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
            check=True,
            capture_output=True,
        ).stdout
    )
    stream = probe["streams"][0]
    assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == (
        "pcm_s16le",
        "16000",
        1,
    )
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-"],
        check=True,
        capture_output=True,
    ).stdout
    assert raw == pcm


@pytest.mark.skipif(shutil.which("mkvinfo") is None, reason="mkvinfo missing")
def test_mkvinfo_sees_one_track_and_a_cluster_per_fragment(tmp_path: Path) -> None:
    """mkvinfo parses the body: A_PCM/INT/LIT track, 16000 Hz, 4 clusters with absolute times."""
    path = tmp_path / "body.mkv"
    path.write_bytes(body(tone(3.5)))
    out = subprocess.run(
        ["mkvinfo", "-v", str(path)], check=True, capture_output=True, text=True
    ).stdout
    assert "Codec ID: A_PCM/INT/LIT" in out
    assert "Sampling frequency: 16000" in out
    assert out.splitlines().count("|+ Cluster") == 4
    assert "Cluster timestamp: 490013:53:23.123" in out
    assert "Error" not in out


def test_fragments_have_absolute_timecodes_and_keyframe_blocks() -> None:
    """Clusters start every 1000 ms from the anchor; blocks are key frames, relative, increasing."""
    parsed = parse(body(tone(2.5)))
    clusters = parsed["clusters"]
    assert [tc for tc, _ in clusters] == [START, START + 1000, START + 2000]
    for _, blocks in clusters:
        rels = [rel for rel, _, _ in blocks]
        assert rels == sorted(set(rels)) and rels[0] == 0
        assert all(flags == 0x80 for _, flags, _ in blocks)
        assert all(len(p) <= 40 * 32 for _, _, p in blocks)
    assert sum(len(p) for _, b in clusters for _, _, p in b) == 2.5 * 32000
    assert parsed["tags"].count("MimeType") == 3
    assert parsed["tags"].count("SessionId") == 3
    assert parsed["tags"][-1] == "AWS_KINESISVIDEO_END_OF_FRAGMENT"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2 * 32000), max_size=12))
def test_any_split_of_the_input_gives_the_same_bytes(cuts: list[int]) -> None:
    """The body depends on sample positions only, not on how the PCM was cut into writes."""
    pcm = tone(2.0, seed=1)
    assert body(pcm, splits=sorted(cuts)) == body(pcm)


def test_odd_byte_writes_keep_samples_whole() -> None:
    """A write that ends mid-sample is completed by the next one."""
    pcm = tone(0.5)
    assert body(pcm, splits=list(range(1, len(pcm), 333))) == body(pcm)


def test_anchor_leaves_a_gap_and_never_goes_back() -> None:
    """anchor() forward closes the fragment and starts later; backwards is clamped to the end."""
    writer = FragmentWriter("s", start_ms=1000, fragment_ms=1000)
    pieces = writer.write(tone(0.5))
    assert pieces[0].opened and not pieces[0].closed and writer.end_ms == 1500
    closing = writer.anchor(5000)
    assert len(closing) == 1 and closing[0].closed and closing[0].duration_ms == 500
    assert writer.anchor(10) == [] and writer.end_ms == 5000
    nxt = writer.write(tone(0.1))
    assert nxt[0].opened and nxt[0].timecode == 5000


def test_pieces_account_for_every_sample() -> None:
    """The samples reported by pieces add up to the input; each fragment closes at 1000 ms."""
    writer = FragmentWriter("s", start_ms=0, fragment_ms=1000)
    pieces = writer.write(tone(2.7)) + writer.close()
    assert sum(p.samples for p in pieces) == int(2.7 * 16000)
    closed = [p for p in pieces if p.closed]
    assert [p.duration_ms for p in closed] == [1000, 1000, 700]
    assert [p.timecode for p in closed] == [0, 1000, 2000]
    assert writer.end_ms == 2700


def test_writer_refuses_fragments_over_the_kvs_limit() -> None:
    """A fragment longer than 10 s (KVS error 4002) cannot be configured."""
    with pytest.raises(ValueError):
        FragmentWriter("s", start_ms=0, fragment_ms=10_001)
