"""What the media pipeline hands on: sample-counted 16 kHz mono s16le PCM."""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_RATE = 16000
"""Output sample rate of every StreamDecoder (DESIGN.md §1)."""

BYTES_PER_SAMPLE = 2


@dataclass(frozen=True, slots=True)
class Pcm:
    """A run of output samples and where it sits in the socket's stream.

    `offset` counts samples at 16 kHz from the first sample the socket produced; consecutive
    pieces from one StreamDecoder are contiguous (`next.offset == prev.offset + prev.samples`),
    also across a restarted recorder.
    """

    offset: int
    data: bytes

    def __post_init__(self) -> None:
        if self.offset < 0:
            raise ValueError(f"negative offset {self.offset}")
        if len(self.data) % BYTES_PER_SAMPLE:
            raise ValueError(f"odd PCM length {len(self.data)}")

    @property
    def samples(self) -> int:
        return len(self.data) // BYTES_PER_SAMPLE

    @property
    def end(self) -> int:
        """Offset of the sample after this piece."""
        return self.offset + len(self.data) // BYTES_PER_SAMPLE
