"""Facts about Opus packets the demuxers need without decoding (RFC 6716 §3.1)."""

from __future__ import annotations

# Samples at 48 kHz per frame, by TOC configuration number (RFC 6716 §3.1, Table 2).
_FRAME_SAMPLES = (
    [480, 960, 1920, 2880] * 3  # SILK-only: 10, 20, 40, 60 ms
    + [480, 960] * 2  # hybrid: 10, 20 ms
    + [120, 240, 480, 960] * 4  # CELT-only: 2.5, 5, 10, 20 ms
)


def packet_samples(packet: bytes) -> int:
    """Duration of an Opus packet in 48 kHz samples (0 for a malformed one)."""
    if not packet:
        return 0
    toc = packet[0]
    per_frame = _FRAME_SAMPLES[toc >> 3]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(packet) < 2:
            return 0
        frames = packet[1] & 0x3F
    return per_frame * frames
