"""A `stop` after a stream cut short (it ends inside an element): never a silent 1000.

Nothing decodable → 4415 at once, nothing stored. Some audio decoded → that audio is persisted
and acked like any `stop` (the final ack covers every message) and the close is 1000, its reason
noting the incomplete last frame. Real server, real registry, the emulator; boto3 read-back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kvs_ingest.media import MediaError, StreamDecoder
from kvs_ingest.server.app import CUT_SHORT_NORMAL, CUT_SHORT_NOTHING
from kvs_ingest.server.errors import PUBLIC_MESSAGES, CloseCode

from .chain import chain, corpus_chunks, pcm_of, read_stream
from .conftest import Ending, read_until_closed, speaker

CLUSTER = b"\x1f\x43\xb6\x75"  # the Matroska Cluster element id


async def send_then_stop(url: str, messages: list[bytes], within: float = 60) -> Ending:
    """Send `messages`, then `stop`; what the socket got until it closed."""
    async with speaker(url) as ws:
        for p in messages:
            await ws.send(p)
        await ws.send(json.dumps({"type": "stop"}))
        return await read_until_closed(ws, within=within)


def decoded_before_the_cut(chunks: list[bytes]) -> np.ndarray:
    """What our decoder makes of `chunks`; asserts that they do end inside an element."""
    decoder = StreamDecoder("webm")
    parts = [p.data for c in chunks for p in decoder.feed(c)]
    with pytest.raises(MediaError, match="inside an element") as cut:
        decoder.flush()
    parts += [p.data for p in cut.value.pcm]
    return np.frombuffer(b"".join(parts), np.int16)


@pytest.mark.parametrize(
    ("query", "media"),
    [
        ("format=webm", lambda chunks: [chunks[0][:20]]),  # EBML header cut in the middle
        ("", lambda chunks: [b"\x1a\x45\xdf"]),  # three bytes: too short to even identify
        # the header whole, then the first Cluster's id cut after two of its four bytes
        ("format=webm", lambda chunks: [chunks[0][: chunks[0].find(CLUSTER) + 2]]),
    ],
    ids=["header-cut", "three-bytes", "cut-before-audio"],
)
async def test_nothing_decodable_then_stop_is_4415(tmp_path: Path, query: str, media) -> None:
    """Media that never completed one frame, then `stop`: one `error` 4415 saying the stream
    ended inside an incomplete element, close 4415, no ack, nothing in KVS."""
    pieces = media(corpus_chunks())
    async with chain(tmp_path) as c:
        ending = await send_then_stop(c.srv.ws_url("cut0", query), pieces)
        blocks = await read_stream(c.emulator.url, "session-cut0")
    assert ending.code == 4415, (ending.code, ending.messages)
    # held_seq 0: the one message was read (it completed no frame, so nothing is stored)
    assert ending.errors == [
        {"type": "error", "code": 4415, "message": CUT_SHORT_NOTHING, "held_seq": 0}
    ]
    assert "incomplete element" in ending.errors[0]["message"]
    assert ending.acks == []
    assert blocks == []


async def test_audio_then_a_cut_tail_is_persisted_acked_and_closed_1000(tmp_path: Path) -> None:
    """A recording whose last chunk is cut in half, then `stop`: every frame before the cut is
    in KVS sample-exact, the final ack covers the last message and reports that audio, no
    `error`, and the 1000's close reason says the incomplete last frame was not stored."""
    chunks = corpus_chunks()
    sent = [*chunks[:-1], chunks[-1][: len(chunks[-1]) // 2]]
    want = decoded_before_the_cut(sent)
    assert len(want) > 16000  # seconds of audio at stake, not a corner case
    async with chain(tmp_path) as c:
        ending = await send_then_stop(c.srv.ws_url("cut1"), sent)
        got = pcm_of(await read_stream(c.emulator.url, "session-cut1"))
    assert (ending.code, ending.reason) == (1000, CUT_SHORT_NORMAL), ending
    assert ending.errors == []
    assert np.array_equal(got, want), (len(got), len(want))
    last = ending.acks[-1]
    assert last["seq"] == len(sent) - 1
    assert last["persisted_ms"] == len(want) * 1000 // 16000


async def test_a_whole_recording_closes_1000_with_the_plain_reason(tmp_path: Path) -> None:
    """The same recording whole: 1000 with the plain reason, so the note above means a cut."""
    chunks = corpus_chunks()
    async with chain(tmp_path) as c:
        ending = await send_then_stop(c.srv.ws_url("whole"), chunks)
    assert (ending.code, ending.reason) == (1000, PUBLIC_MESSAGES[CloseCode.NORMAL]), ending
