"""Fuzz: corrupted and truncated streams of every container, fed in random pieces. Only
MediaError may escape, nothing hangs, and memory stays bounded."""

from __future__ import annotations

import itertools
import os

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvs_ingest.media import MediaError, StreamDecoder
from tests.unit.media.corpus import Stream

FUZZ_STREAMS = [
    "chrome-like-webm",
    "laced-webm",
    "webm-opus",
    "mka-s16-44k",
    "ogg-opus",
    "mp4-aac",
    "mp4-opus",
    "restarted-webm",
]
MAX_SOURCE_BYTES = 24_000  # a few seconds of compressed audio: keeps one example fast
EXAMPLES = int(os.environ.get("KVS_INGEST_FUZZ_EXAMPLES", "400"))
RSS_GROWTH_LIMIT = 150 << 20

_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 1 << 20), st.sampled_from([0x00, 0x01, 0x7F, 0xFF])),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
)


def mutate(data: bytes, mutations: list[tuple[str, int, object]]) -> bytes:
    buf = bytearray(data)
    for kind, where, arg in mutations:
        if not buf:
            break
        pos = where % len(buf)
        if kind == "flip":
            assert isinstance(arg, int)
            buf[pos] ^= arg
        elif kind == "set":
            assert isinstance(arg, int)
            buf[pos] = arg
        elif kind == "insert":
            assert isinstance(arg, bytes)
            buf[pos:pos] = arg
        elif kind == "delete":
            assert isinstance(arg, int)
            del buf[pos : pos + arg]
        else:
            del buf[pos:]
    return bytes(buf)


def run_decoder(data: bytes, cuts: list[int], fmt: str | None = None) -> None:
    """Feed and flush; anything but MediaError fails the test."""
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    decoder = StreamDecoder(fmt)
    try:
        for a, b in itertools.pairwise(bounds):
            decoder.feed(data[a:b])
        decoder.flush()
    except MediaError:
        pass


@pytest.fixture(scope="module")
def rss_guard() -> object:
    process = psutil.Process()
    before = process.memory_info().rss
    yield None
    growth = process.memory_info().rss - before
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew by {growth >> 20} MiB during the fuzz tests"


@pytest.mark.parametrize("name", FUZZ_STREAMS)
def test_corrupted_streams_raise_only_media_error(
    name: str, ffmpeg_streams: dict[str, Stream], rss_guard: object
) -> None:
    """Random byte flips, insertions, deletions and truncations: MediaError or PCM, never a crash."""
    source = ffmpeg_streams[name].data[:MAX_SOURCE_BYTES]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        mutations=st.lists(_mutation, min_size=1, max_size=6),
        cuts=st.lists(st.integers(0, 1 << 20), max_size=12),
    )
    def check(mutations: list[tuple[str, int, object]], cuts: list[int]) -> None:
        run_decoder(mutate(source, mutations), cuts)

    check()


@pytest.mark.parametrize("fmt", ["webm", "ogg", "mp4", None])
@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(data=st.binary(max_size=4096), cuts=st.lists(st.integers(0, 4096), max_size=8))
def test_random_bytes_raise_only_media_error(
    fmt: str | None, data: bytes, cuts: list[int], rss_guard: object
) -> None:
    """Arbitrary bytes declared as each container (or sniffed) never escape as another error."""
    prefix = {"webm": b"\x1a\x45\xdf\xa3", "ogg": b"OggS\x00\x02", "mp4": b"\x00\x00\x00\x10ftyp"}
    run_decoder(prefix.get(fmt or "", b"") + data, cuts, fmt)
