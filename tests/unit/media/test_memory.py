"""Memory stays bounded whatever the input: long streams of data we do not keep are dropped as
they pass, never buffered."""

from __future__ import annotations

import struct

import psutil
import pytest

from kvs_ingest.media import StreamDecoder
from kvs_ingest.mkv import writer as w
from tests.unit.media.corpus import Stream

TOTAL = 48 << 20  # far more than any cap: growth would show
MESSAGE = 64 << 10
GROWTH_LIMIT = 24 << 20


def _feed_repeated(decoder: StreamDecoder, unit: bytes) -> None:
    message = unit * max(1, MESSAGE // len(unit))
    for _ in range(TOTAL // len(message)):
        decoder.feed(message)


def _webm_other_track(ffmpeg_streams: dict[str, Stream]) -> tuple[bytes, bytes]:
    """A real header, then endless blocks of a track we do not decode (a video track, say)."""
    data = ffmpeg_streams["chrome-like-webm"].data
    head = data[: data.find(b"\x1f\x43\xb6\x75")] + w.cluster_header(0)
    return head, w.simple_block(9, 0, b"\x00" * 1000)


def _ogg_other_stream(ffmpeg_streams: dict[str, Stream]) -> tuple[bytes, bytes]:
    """A real Opus stream's first pages, then endless pages of another logical stream."""
    data = ffmpeg_streams["ogg-opus"].data
    second_page = data.find(b"OggS", 4)
    head = data[: data.find(b"OggS", second_page + 4)]
    page = struct.pack("<4sBBqIIIB", b"OggS", 0, 0, 0, 0xABCDEF, 0, 0, 4)
    return head, page + bytes([250] * 4) + b"\x00" * 1000


def _mp4_free_boxes(ffmpeg_streams: dict[str, Stream]) -> tuple[bytes, bytes]:
    """A real init segment, then endless `free` boxes larger than one message."""
    data = ffmpeg_streams["mp4-aac"].data
    head = data[: data.find(b"moof") - 4]
    return head, struct.pack(">I4s", 200_000, b"free") + b"\x00" * (200_000 - 8)


@pytest.mark.parametrize("make", [_webm_other_track, _ogg_other_stream, _mp4_free_boxes])
def test_data_we_skip_is_not_buffered(make, ffmpeg_streams: dict[str, Stream]) -> None:  # type: ignore[no-untyped-def]
    """48 MiB of data the decoder skips leaves RSS within a few MiB of where it started."""
    head, unit = make(ffmpeg_streams)
    decoder = StreamDecoder()
    decoder.feed(head)
    process = psutil.Process()
    before = process.memory_info().rss
    _feed_repeated(decoder, unit)
    assert process.memory_info().rss - before < GROWTH_LIMIT
    assert decoder.bytes_in > TOTAL // 2
