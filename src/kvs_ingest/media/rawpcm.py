"""Raw interleaved s16le PCM at a declared rate and channel count (AudioWorklet clients)."""

from __future__ import annotations

from kvs_ingest.media.errors import MediaError
from kvs_ingest.media.events import AudioPacket, CodecSetup, DemuxEvent

MIN_RATE = 8000
MAX_RATE = 192_000


class PcmDemuxer:
    """Cuts the byte stream at whole sample frames; a frame split across pieces waits."""

    def __init__(self, rate: int, channels: int) -> None:
        if not MIN_RATE <= rate <= MAX_RATE:
            raise MediaError(f"raw PCM rate {rate} outside {MIN_RATE}..{MAX_RATE} Hz")
        self._setup = CodecSetup("pcm_s16le", rate, channels)
        self._frame_bytes = 2 * channels
        self._started = False
        self._tail = b""

    def feed(self, data: bytes) -> list[DemuxEvent]:
        events: list[DemuxEvent] = []
        if not self._started:
            self._started = True
            events.append(self._setup)
        data = self._tail + data if self._tail else data
        usable = len(data) - len(data) % self._frame_bytes
        self._tail = data[usable:]
        if usable:
            events.append(AudioPacket(data[:usable]))
        return events

    def close(self) -> list[DemuxEvent]:
        if self._tail:
            raise MediaError(f"raw PCM ends inside a sample frame ({len(self._tail)} bytes)")
        return []
