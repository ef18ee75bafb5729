"""StreamDecoder: one socket's bytes in, sample-counted 16 kHz mono s16le PCM out.

Sans-I/O and non-blocking: each `feed` demuxes what is complete, decodes those packets with
PyAV and returns the PCM they make; incomplete input waits in bounded buffers. Demuxers are
ours (WebM, Ogg, fragmented MP4, raw PCM), so FFmpeg never reads, seeks or waits for data.
"""

from __future__ import annotations

from typing import Protocol

from kvs_ingest.media.codec import AudioDecoder
from kvs_ingest.media.errors import MediaError
from kvs_ingest.media.events import AudioPacket, CodecSetup, DemuxEvent
from kvs_ingest.media.mp4 import Mp4Demuxer
from kvs_ingest.media.ogg import OggDemuxer
from kvs_ingest.media.pcm import SAMPLE_RATE, Pcm
from kvs_ingest.media.rawpcm import PcmDemuxer
from kvs_ingest.media.sniff import FORMATS, SNIFF_BYTES, sniff
from kvs_ingest.media.webm import WebmDemuxer

MAX_HEADER_BYTES = 1 << 20
"""Bytes a stream may take to describe its audio before we give up on it."""


class Demuxer(Protocol):
    def feed(self, data: bytes) -> list[DemuxEvent]: ...
    def close(self) -> list[DemuxEvent]: ...


class StreamDecoder:
    """Decodes one socket's media stream (DESIGN.md §2); one instance per socket.

    Call `feed(data)` with every binary message in order and `flush()` once at the end of the
    stream. Both return PCM pieces whose offsets continue where the last piece ended. Any bad
    input raises MediaError; the object is unusable after that (and after `flush`).
    """

    def __init__(
        self,
        format: str | None = None,
        *,
        rate: int | None = None,
        channels: int | None = None,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        if format is not None and format not in FORMATS:
            raise MediaError(f"unsupported format {format!r} (use one of {', '.join(FORMATS)})")
        if format == "pcm_s16le" and rate is None:
            raise MediaError("format=pcm_s16le needs a rate")
        self.format = format
        self._rate = rate
        self._channels = channels or 1
        self._max_header_bytes = max_header_bytes
        self._demuxer: Demuxer | None = None
        self._head = b""
        self._codec: AudioDecoder | None = None
        self._next_offset = 0
        self._failed = False
        self._closed = False
        self.bytes_in = 0
        self.segments = 0

    @property
    def samples_out(self) -> int:
        """Samples returned so far (the offset of the next one)."""
        return self._next_offset

    @property
    def duration(self) -> float:
        """Seconds of audio returned so far."""
        return self._next_offset / SAMPLE_RATE

    def feed(self, data: bytes) -> list[Pcm]:
        self._check_usable()
        self.bytes_in += len(data)
        try:
            if self._demuxer is None:
                data = self._start(data)
                if self._demuxer is None:
                    return []
            out = self._run(self._demuxer.feed(data))
            if self._codec is None and self.bytes_in > self._max_header_bytes:
                raise MediaError(
                    f"no audio description within the first {self._max_header_bytes} bytes"
                )
        except MediaError:
            self._failed = True
            raise
        return out

    def flush(self) -> list[Pcm]:
        """End of stream: decode what is left and return the tail. The decoder is then done.

        Raises MediaError if the stream stopped inside a page, element or box, or before it
        described its audio; the audio of the complete packets is then on the error's `pcm`.
        """
        self._check_usable()
        self._closed = True
        try:
            if self._demuxer is None:
                if self._head:
                    raise MediaError(f"stream of {len(self._head)} bytes is too short to identify")
                return []
            try:
                out = self._run(self._demuxer.close())
            except MediaError as exc:
                self._salvage_tail(exc)
                raise
            if self._codec is None:
                raise MediaError("stream ended before its audio was described")
            tail = self._emit(self._codec.flush())
            self._codec = None
        except MediaError:
            self._failed = True
            raise
        return out + tail

    def _salvage_tail(self, exc: MediaError) -> None:
        """The input was cut off: still drain the codec, and hand its tail over on the error."""
        if self._codec is None:
            return
        try:
            exc.pcm = self._emit(self._codec.flush())
        except MediaError:
            pass
        self._codec = None

    def _check_usable(self) -> None:
        if self._failed:
            raise MediaError("decoder already failed")
        if self._closed:
            raise MediaError("decoder already flushed")

    def _start(self, data: bytes) -> bytes:
        """Pick the demuxer (declared or sniffed); returns the bytes it should be fed."""
        fmt = self.format
        if fmt is None:
            self._head += data
            fmt = sniff(self._head[:SNIFF_BYTES])
            if fmt is None:
                return b""
            self.format = fmt
            data, self._head = self._head, b""
        if fmt == "webm":
            self._demuxer = WebmDemuxer()
        elif fmt == "ogg":
            self._demuxer = OggDemuxer()
        elif fmt == "mp4":
            self._demuxer = Mp4Demuxer()
        else:
            assert self._rate is not None
            self._demuxer = PcmDemuxer(self._rate, self._channels)
        return data

    def _run(self, events: list[DemuxEvent]) -> list[Pcm]:
        parts: list[bytes] = []
        packets: list[tuple[bytes, int]] = []  # consecutive packets, decoded as one batch
        for event in events:
            if type(event) is AudioPacket:
                if self._codec is None:
                    raise MediaError("audio before its codec was described")
                packets.append((event.data, event.discard))
            elif type(event) is CodecSetup:
                if self._codec is not None:
                    parts.append(self._codec.decode_many(packets))
                    packets = []
                    parts.append(self._codec.flush())  # the old recorder's tail
                self._codec = AudioDecoder(event)
                self.segments += 1
        if packets:
            assert self._codec is not None
            parts.append(self._codec.decode_many(packets))
        return self._emit(b"".join(parts))

    def _emit(self, data: bytes) -> list[Pcm]:
        if not data:
            return []
        pcm = Pcm(self._next_offset, data)
        self._next_offset = pcm.end
        return [pcm]
