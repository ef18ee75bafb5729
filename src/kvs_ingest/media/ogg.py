"""Ogg/Opus demuxer (RFC 3533 pages, RFC 7845 Opus mapping), sans-I/O.

Firefox's `audio/ogg;codecs=opus` MediaRecorder output. A page is at most 65 307 bytes, so the
buffer stays small; a packet that spans pages is capped too. A new beginning-of-stream page
after audio has flowed (a chained stream: the page restarted its recorder) starts a new segment.
Pre-skip is carried in the OpusHead that we hand to the decoder, which trims it as FFmpeg does.
"""

from __future__ import annotations

import struct

from kvs_ingest.media.errors import MediaError
from kvs_ingest.media.events import AudioPacket, CodecSetup, DemuxEvent
from kvs_ingest.media.opus import packet_samples

_CAPTURE = b"OggS"
_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, nsegs
_FLAG_CONTINUED = 0x01
_FLAG_BOS = 0x02
_FLAG_EOS = 0x04
MAX_PACKET_BYTES = 256 << 10  # an Opus packet is at most ~8 KiB (120 ms at 510 kbit/s)


def parse_opus_head(head: bytes) -> CodecSetup:
    """Check an OpusHead packet (RFC 7845 §5.1) and turn it into a CodecSetup.

    Opus always decodes at 48 kHz; the "input sample rate" field is informational only
    (Firefox writes odd values there), so it is ignored.
    """
    if len(head) < 19 or not head.startswith(b"OpusHead"):
        raise MediaError("Opus set-up is not an OpusHead")
    version, channels = head[8], head[9]
    if version >> 4:
        raise MediaError(f"unsupported OpusHead version {version}")
    if channels == 0:
        raise MediaError("OpusHead declares zero channels")
    return CodecSetup("opus", 48000, channels, bytes(head))


class OggDemuxer:
    """Feed Ogg bytes in any pieces; get CodecSetup and AudioPacket events in order.

    Only the first Opus logical stream of each chain link is used; other multiplexed streams
    (skeleton, video) are skipped. After a MediaError the demuxer is unusable.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._serial: int | None = None  # the Opus stream being decoded
        self._in_headers = False  # the next page-complete packet of ours is OpusTags
        self._saw_audio = False
        self._bos_phase = True  # at the start of a chain link, BOS pages come first
        self._foreign: list[str] = []  # what other streams the link had, for the error text
        self._partial = bytearray()  # a packet continued onto the next page
        self._position = 0  # 48 kHz samples in the packets so far, pre-skip included
        self.pages = 0

    def feed(self, data: bytes) -> list[DemuxEvent]:
        self._buf += data
        events: list[DemuxEvent] = []
        buf = self._buf
        pos = 0
        n = len(buf)
        while n - pos >= 27:
            if buf[pos : pos + 4] != _CAPTURE:
                raise MediaError(f"lost Ogg page sync after {self.pages} pages")
            _, version, flags, granule, serial, _seq, _crc, nsegs = _HEADER.unpack_from(buf, pos)
            if version != 0:
                raise MediaError(f"unsupported Ogg version {version}")
            if n - pos < 27 + nsegs:
                break
            lacing = bytes(buf[pos + 27 : pos + 27 + nsegs])
            body_len = sum(lacing)
            end = pos + 27 + nsegs + body_len
            if end > n:
                break
            body = bytes(buf[pos + 27 + nsegs : end])
            self._page(flags, granule, serial, lacing, body, events)
            self.pages += 1
            pos = end
        del buf[:pos]
        return events

    def close(self) -> list[DemuxEvent]:
        """End of input: raises MediaError if it stopped inside a page."""
        if self._buf:
            raise MediaError(f"Ogg stream truncated inside a page ({len(self._buf)} bytes left)")
        return []

    def _page(
        self,
        flags: int,
        granule: int,
        serial: int,
        lacing: bytes,
        body: bytes,
        out: list[DemuxEvent],
    ) -> None:
        if flags & _FLAG_BOS:
            self._begin_stream(serial, body, lacing, out)
            return
        if self._bos_phase:
            self._bos_phase = False
            if self._serial is None:
                found = ", ".join(self._foreign) or "nothing"
                raise MediaError(f"Ogg stream holds no Opus audio (found {found})")
        if serial != self._serial:
            return
        packets = self._split(flags, lacing, body)
        if self._in_headers and packets:
            self._in_headers = False  # OpusTags: metadata we do not need
            packets = packets[1:]
        packets = [p for p in packets if p]
        if not packets:
            return
        self._saw_audio = True
        for packet in packets[:-1]:
            self._position += packet_samples(packet)
            out.append(AudioPacket(packet))
        last = packets[-1]
        duration = packet_samples(last)
        self._position += duration
        discard = 0
        if flags & _FLAG_EOS and 0 <= granule < self._position:
            # The last page's granule position ends the stream short of its last packet's
            # end: the rest is padding (RFC 7845 §4.5).
            discard = min(self._position - granule, duration)
        out.append(AudioPacket(last, discard))

    def _begin_stream(self, serial: int, body: bytes, lacing: bytes, out: list[DemuxEvent]) -> None:
        if not self._bos_phase:
            # A chained link: the recorder restarted (even if the old one never carried audio).
            # Drop the old stream's state.
            self._bos_phase = True
            self._serial = None
            self._foreign = []
            self._partial.clear()
        first = bytes(body[: lacing[0]]) if lacing else b""
        if self._serial is not None:  # a second stream in a grouped link: not ours
            return
        if first.startswith(b"OpusHead"):
            out.append(parse_opus_head(first))
            self._serial = serial
            self._in_headers = True
            self._saw_audio = False
            self._position = 0
        else:
            self._foreign.append(_describe(first))

    def _split(self, flags: int, lacing: bytes, body: bytes) -> list[bytes]:
        """Reassemble this page's packets; a packet cut by the page end waits in `_partial`."""
        packets: list[bytes] = []
        if not flags & _FLAG_CONTINUED and self._partial:
            self._partial.clear()  # the previous page promised a continuation that never came
        start = 0
        seg_start = 0
        for i, lace in enumerate(lacing):
            start += lace
            if lace < 255:
                chunk = body[seg_start:start]
                if self._partial:
                    self._partial += chunk
                    packets.append(bytes(self._partial))
                    self._partial.clear()
                else:
                    packets.append(bytes(chunk))
                seg_start = start
            elif i == len(lacing) - 1:
                self._partial += body[seg_start:start]
                if len(self._partial) > MAX_PACKET_BYTES:
                    raise MediaError(f"Ogg packet larger than {MAX_PACKET_BYTES} bytes")
        return packets


def _describe(first_packet: bytes) -> str:
    for magic, name in (
        (b"\x01vorbis", "Vorbis"),
        (b"\x7fFLAC", "FLAC"),
        (b"\x80theora", "Theora"),
        (b"Speex", "Speex"),
        (b"fishead", "Skeleton"),
    ):
        if first_packet.startswith(magic):
            return name
    return "an unknown codec"
