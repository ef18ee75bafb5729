"""Events every demuxer emits: codec set-up for a new segment, then that segment's packets.

A demuxer turns container bytes into these; `codec.AudioDecoder` turns them into PCM. Keeping
this seam small is what lets each container parser stay a pure, separately tested class.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvs_ingest.media.errors import MediaError

# Codec names are FFmpeg's decoder names, so `av.CodecContext.create(name, "r")` takes them.
SUPPORTED_CODECS = frozenset(
    {
        "opus",
        "aac",
        "pcm_s16le",
        "pcm_s16be",
        "pcm_s24le",
        "pcm_s24be",
        "pcm_s32le",
        "pcm_s32be",
        "pcm_f32le",
        "pcm_f32be",
        "pcm_f64le",
        "pcm_f64be",
        "pcm_u8",
    }
)

MAX_CHANNELS = 8
MAX_SAMPLE_RATE = 384_000


@dataclass(frozen=True, slots=True)
class CodecSetup:
    """A new segment starts: decode what follows with this codec.

    Built from peer data, so an impossible set-up raises MediaError, not ValueError.

    A second CodecSetup in one stream means the recorder restarted (a new EBML header, Ogg BOS
    or moov): the decoder flushes the old codec's tail and continues the sample count.
    `extradata` is the codec's own set-up (OpusHead, AudioSpecificConfig) or None.
    """

    codec: str
    sample_rate: int
    channels: int
    extradata: bytes | None = None

    def __post_init__(self) -> None:
        if self.codec not in SUPPORTED_CODECS:
            raise MediaError(f"unsupported codec {self.codec!r}")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise MediaError(f"unsupported channel count {self.channels}")
        if not 1000 <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise MediaError(f"unsupported sample rate {self.sample_rate}")


@dataclass(frozen=True, slots=True)
class AudioPacket:
    """One codec packet (an Opus packet, an AAC access unit, or a run of PCM frames).

    `discard` is how many decoded samples (at the codec's rate) at the end of this packet are
    padding to drop: the end trimming of Ogg's last granule position (RFC 7845 §4.5) or
    Matroska's DiscardPadding.
    """

    data: bytes
    discard: int = 0

    def __post_init__(self) -> None:
        if self.discard < 0:
            raise MediaError(f"negative discard {self.discard}")


DemuxEvent = CodecSetup | AudioPacket
