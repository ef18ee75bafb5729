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


def stretched(pcm: bytes, message_samples: list[int], **kw: int) -> tuple[FragmentWriter, list]:
    """Write `pcm` as messages of the given sample counts into a writer that cuts at the end
    of the write reaching 1000 ms (at most 2000 ms); returns the writer and all pieces."""
    writer = FragmentWriter("s", start_ms=START, fragment_ms=1000, max_fragment_ms=2000, **kw)
    pieces, pos = [], 0
    for n in message_samples:
        pieces += writer.write(pcm[pos : pos + 2 * n])
        pos += 2 * n
    return writer, pieces + writer.close()


def test_stretched_fragments_end_with_the_message_that_reaches_fragment_ms() -> None:
    """Browser-like messages (a first one short by Opus pre-skip, then 240 ms each): every
    message's samples land in one fragment, fragments are 1000-1240 ms."""
    sizes = [3840 - 104] + [3840] * 21
    writer = FragmentWriter("s", start_ms=START, fragment_ms=1000, max_fragment_ms=2000)
    pcm, pos, pieces = tone(6.0), 0, []
    for n in sizes:
        out = writer.write(pcm[pos : pos + 2 * n])
        pos += 2 * n
        assert len(out) == 1 and out[0].samples == n  # the message is not split
        pieces += out
    pieces += writer.close()
    closed = [p for p in pieces if p.closed]
    # ms spans (first sample rounded down, end rounded up) of 233.5 + 4 x 240 ms, then 5 x 240
    assert [p.duration_ms for p in closed] == [1194, 1201, 1201, 1201, 481]
    assert [p.timecode - START for p in closed] == [0, 1193, 2393, 3593, 4793]
    assert sum(p.samples for p in pieces) == sum(sizes)


def test_stretched_fragments_keep_sample_exact_timecodes() -> None:
    """Fragments whose sample count is not a whole millisecond: each Cluster starts at its first
    sample's millisecond (rounded down), so no gap and no creeping offset builds up over an
    hour-long stream's worth of fragments."""
    sizes = [3840 - 104] + [3840] * 499  # 120 s, every fragment ends half a millisecond in
    pcm = tone(120.0)
    writer, pieces = stretched(pcm, sizes)
    parsed = parse(b"".join([connection_header(UID)] + [p.data for p in pieces]))
    position = 0  # samples before each Cluster
    last_block_ms = -1
    for tc, blocks in parsed["clusters"]:
        assert tc == START + position // 16  # the first sample's millisecond
        assert tc > last_block_ms
        for rel, _, payload in blocks:
            assert tc + rel == START + position // 16
            last_block_ms = tc + rel
            position += len(payload) // 2
    assert position == sum(sizes)
    assert writer.end_ms == START + -(-sum(sizes) // 16)


def test_stretched_fragment_holds_at_most_max_fragment_ms() -> None:
    """One 5 s write is cut at 2000 ms twice; the rest stays open."""
    _, pieces = stretched(tone(5.0), [80000])
    assert [(p.closed, p.duration_ms) for p in pieces] == [(True, 2000), (True, 2000), (True, 1000)]
    assert [p.timecode for p in pieces] == [START, START + 2000, START + 4000]


def test_a_final_block_under_a_millisecond_moves_the_next_fragment_on() -> None:
    """A fragment closed 8 samples into a millisecond whose last block is those 8 samples:
    the next Cluster starts 1 ms later, never at its last block's timecode."""
    writer = FragmentWriter("s", start_ms=0, fragment_ms=1000, block_ms=40)
    pieces = writer.write(tone(0.05)[: 2 * 648]) + writer.close()  # one block + 8 samples
    pieces += writer.write(tone(0.1))
    parsed = parse(b"".join([connection_header(UID)] + [p.data for p in pieces]))
    (_, blocks0), (tc1, _) = parsed["clusters"]
    assert [rel for rel, _, _ in blocks0] == [0, 40]
    assert tc1 == 41


@needs_ffmpeg
def test_ffmpeg_decodes_stretched_fragments_exactly(tmp_path: Path) -> None:
    """ffmpeg returns the very samples of a body of stretched, half-millisecond fragments."""
    sizes = [3840 - 104] + [3840] * 40
    pcm = tone(10.0)
    _, pieces = stretched(pcm, sizes)
    path = tmp_path / "body.mkv"
    path.write_bytes(b"".join([connection_header(UID)] + [p.data for p in pieces]))
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-"],
        check=True,
        capture_output=True,
    ).stdout
    assert raw == pcm[: 2 * sum(sizes)]
