"""Streaming media pipeline: browser recorder bytes in, 16 kHz mono s16le PCM out (issue 3).

`StreamDecoder` is the only entry point the server needs; the demuxers and the codec stage
behind it are sans-I/O classes of their own, tested one by one.
"""

from __future__ import annotations

from kvs_ingest.media.decoder import StreamDecoder
from kvs_ingest.media.errors import MediaError
from kvs_ingest.media.pcm import SAMPLE_RATE, Pcm
from kvs_ingest.media.sniff import FORMATS

__all__ = ["FORMATS", "SAMPLE_RATE", "MediaError", "Pcm", "StreamDecoder"]
