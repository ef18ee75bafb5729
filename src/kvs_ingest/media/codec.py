"""Decode codec packets with PyAV and resample to 16 kHz mono s16, one segment at a time.

One `AudioDecoder` lives for one segment (one CodecSetup): an FFmpeg decoder context plus an
`AudioResampler`. Both keep state between packets, so packets from any chunking give the same
samples. Nothing here reads input or waits: FFmpeg only ever sees whole packets.
"""

from __future__ import annotations

from collections.abc import Sequence
from errno import EAGAIN

import av
import av.error
import numpy as np
from av.filter import Graph

from kvs_ingest.media.errors import MediaError
from kvs_ingest.media.events import CodecSetup
from kvs_ingest.media.pcm import SAMPLE_RATE

_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


class AudioDecoder:
    """Packets of one segment in, s16le mono 16 kHz bytes out.

    `decode_many()` for each batch of packets, `flush()` once at the segment's end (returns the
    tail held in the codec and the resampler). A MediaError leaves the object unusable.
    """

    def __init__(self, setup: CodecSetup) -> None:
        self.setup = setup
        try:
            ctx = av.AudioCodecContext.create(setup.codec, "r")
            assert isinstance(ctx, av.AudioCodecContext)
            # FFmpeg's default (0 = auto) starts worker threads per context even for audio
            # codecs that never use them: two per socket. Decoding stays on the caller's thread.
            ctx.thread_count = 1
            ctx.sample_rate = setup.sample_rate
            ctx.layout = _LAYOUTS[setup.channels]
            if setup.extradata:
                ctx.extradata = setup.extradata
            ctx.open()
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(f"cannot open {setup.codec} decoder: {exc}") from None
        self._ctx = ctx
        self._resampler = self._new_resampler()
        self._frame_key: tuple[str, str, int] | None = None

    @staticmethod
    def _new_resampler() -> Resampler:
        return Resampler()

    def decode_many(self, packets: Sequence[tuple[bytes, int]]) -> bytes:
        """Decode packets (data, discard: samples at the codec rate dropped from the end of that
        packet's output). The resampler is pulled once for all of them (one message's packets),
        which costs less than once per packet and gives the same samples."""
        frames: list[av.AudioFrame] = []
        for packet, discard in packets:
            try:
                decoded = self._ctx.decode(av.Packet(packet))
            except (av.error.FFmpegError, ValueError) as exc:
                raise MediaError(f"undecodable {self.setup.codec} packet: {exc}") from None
            frames += _trim_end(decoded, discard) if discard and decoded else decoded
        return self._resample(frames)

    def flush(self) -> bytes:
        """End of segment: drain the codec and the resampler."""
        try:
            frames = self._ctx.decode(None)
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(f"undecodable {self.setup.codec} tail: {exc}") from None
        out = self._resample(frames)
        return out + self._drain_resampler()

    def _drain_resampler(self) -> bytes:
        return b"".join(_s16(f) for f in self._resampler.resample(None))

    def _resample(self, frames: list[av.AudioFrame]) -> bytes:
        parts: list[bytes] = []
        for frame in frames:
            key = (frame.format.name, frame.layout.name, frame.sample_rate)
            if key != self._frame_key:
                if self._frame_key is not None:
                    # The codec changed its output (e.g. AAC SBR switched on): the resampler
                    # cannot follow, so drain it and start a new one.
                    parts.extend(_s16(f) for f in self._resampler.pull())
                    parts.append(self._drain_resampler())
                    self._resampler = self._new_resampler()
                self._frame_key = key
            frame.pts = None  # we count samples ourselves; do not let swr fill pts gaps
            self._resampler.push(frame)
        parts.extend(_s16(f) for f in self._resampler.pull())
        return b"".join(parts)


class Resampler:
    """Any decoded audio to s16 mono 16 kHz through FFmpeg's filter graph (swresample).

    It does what `av.AudioResampler` does, with one difference that matters at thousands of
    sockets: the graph runs single-threaded. PyAV's graph leaves FFmpeg's automatic thread count,
    which starts about two idle worker threads per resampler, i.e. per socket.
    """

    def __init__(self) -> None:
        self._graph: Graph | None = None

    def _configure(self, frame: av.AudioFrame) -> Graph:
        graph = Graph()
        graph.threads = 1  # must be set before any filter is added
        source = graph.add(
            "abuffer",
            sample_rate=str(frame.sample_rate),
            sample_fmt=frame.format.name,
            channel_layout=frame.layout.name,
        )
        convert = graph.add(
            "aformat", sample_rates=str(SAMPLE_RATE), sample_fmts="s16", channel_layouts="mono"
        )
        sink = graph.add("abuffersink")
        source.link_to(convert)
        convert.link_to(sink)
        graph.configure()
        return graph

    def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        """Push one frame (None: end of input, drain the filter) and return what is ready."""
        self.push(frame)
        return self.pull()

    def push(self, frame: av.AudioFrame | None) -> None:
        """Hand one frame (None: end of input) to the filter; `pull` takes the output."""
        if self._graph is None:
            if frame is None:
                return
            self._graph = self._configure(frame)
        self._graph.push(frame)

    def pull(self) -> list[av.AudioFrame]:
        """Every frame the filter has ready (asking until it says EAGAIN costs an exception,
        so it is asked once per batch of pushes)."""
        graph = self._graph
        out: list[av.AudioFrame] = []
        if graph is None:
            return out
        while True:
            try:
                pulled = graph.pull()
            except EOFError:
                break
            except av.error.FFmpegError as exc:
                if exc.errno != EAGAIN:
                    raise
                break
            assert isinstance(pulled, av.AudioFrame)
            out.append(pulled)
        return out


def _trim_end(frames: list[av.AudioFrame], discard: int) -> list[av.AudioFrame]:
    """The frames without their last `discard` samples (end-of-stream padding)."""
    out = list(frames)
    while discard and out:
        last = out.pop()
        keep = last.samples - discard
        discard = max(0, -keep)
        if keep > 0:
            data = last.to_ndarray()
            planar = last.format.is_planar
            data = data[:, :keep] if planar else data[:, : keep * len(last.layout.channels)]
            trimmed = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data),  # type: ignore[arg-type]
                format=last.format.name,
                layout=last.layout.name,
            )
            trimmed.sample_rate = last.sample_rate
            out.append(trimmed)
    return out


def _s16(frame: av.AudioFrame) -> bytes:
    # The plane's buffer may be padded past the last sample: cut it to the frame's length.
    return bytes(frame.planes[0])[: frame.samples * 2]
