"""Pipeline benchmark: CPU cost of turning browser chunks into 16 kHz PCM, side by side.

Measured in one run on the same audio (Chrome-shaped WebM/Opus: 60 ms packets, 250 ms
clusters, cut into 250 ms chunks):
  (a) this pipeline: one StreamDecoder fed every chunk (our demuxer + PyAV decode/resample);
  (b) the old Lambda's way: one `ffmpeg` process per chunk, the stream header prepended;
  (c) the floor: one `ffmpeg` process decoding the whole file.
Prints CPU seconds per second of audio for each and the ratios. Other formats' (a) are printed
for reference. Run: `.venv/bin/python benchmarks/pipeline.py [--seconds 60] [--repeat 5]`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kvs_ingest.media import SAMPLE_RATE, StreamDecoder
from kvs_ingest.mkv import EbmlReader, MasterStart
from kvs_ingest.mkv.ids import ID

FF = ("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y")
TO_PCM = ("-ar", "16000", "-ac", "1", "-f", "s16le", "-")


def make_source(folder: Path, seconds: float) -> Path:
    """Speech (espeak-ng) over a quiet tone, stereo 48 kHz, looped to `seconds`."""
    speech = folder / "speech.wav"
    text = "The quick brown fox jumps over the lazy dog. We measure what decoding costs. " * 3
    subprocess.run(["espeak-ng", "-w", str(speech), text], check=True, capture_output=True)
    src = folder / "source.wav"
    subprocess.run(
        [*FF, "-stream_loop", "-1", "-i", str(speech), "-f", "lavfi", "-i",
         f"sine=frequency=440:sample_rate=48000:duration={seconds}", "-filter_complex",
         "[0]aresample=48000[s];[s][1]amix=inputs=2:duration=shortest,pan=stereo|c0=c0|c1=c0",
         "-t", str(seconds), str(src)],
        check=True,
    )  # fmt: skip
    return src


def encode(src: Path, kind: str) -> bytes:
    opus = ("-c:a", "libopus", "-b:a", "32k", "-frame_duration", "60")
    args = {
        "webm-opus": (*opus, "-f", "webm", "-live", "1", "-cluster_time_limit", "250"),
        "ogg-opus": (*opus, "-f", "ogg"),
        "mp4-aac": ("-c:a", "aac", "-b:a", "64k", "-movflags",
                    "frag_keyframe+empty_moov+default_base_moof", "-frag_duration", "250000",
                    "-f", "mp4"),
        "pcm-s16le-48k": ("-f", "s16le", "-ar", "48000", "-ac", "1"),
    }[kind]  # fmt: skip
    return subprocess.run([*FF, "-i", str(src), *args, "-"], check=True, capture_output=True).stdout


def webm_chunks(data: bytes) -> tuple[bytes, list[bytes]]:
    """The header (everything before the first Cluster) and one chunk per 250 ms Cluster.

    For (b) every chunk gets the header prepended; the first chunk already starts with it, and
    ffmpeg reads a doubled header fine, so it is treated like the others.
    """
    starts = [
        e.offset
        for e in EbmlReader().feed(data)
        if isinstance(e, MasterStart) and e.id == ID.CLUSTER
    ]
    bounds = [0, *starts[1:], len(data)]  # the first chunk carries the header, as in a browser
    return data[: starts[0]], [data[a:b] for a, b in itertools.pairwise(bounds)]


def even_chunks(data: bytes, count: int) -> list[bytes]:
    size = max(1, len(data) // count)
    return [data[i : i + size] for i in range(0, len(data), size)]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def pipeline_cpu(
    chunks: list[bytes], fmt: str | None = None, **declared: int
) -> tuple[float, int, list[float]]:
    """CPU seconds for one StreamDecoder over all chunks, samples made, per-feed CPU times."""
    decoder = StreamDecoder(fmt, **declared)
    per_feed = []
    samples = 0
    start = time.process_time()
    for chunk in chunks:
        t = time.process_time()
        samples += sum(p.samples for p in decoder.feed(chunk))
        per_feed.append(time.process_time() - t)
    samples += sum(p.samples for p in decoder.flush())
    return time.process_time() - start, samples, per_feed


def ffmpeg_per_chunk_cpu(header: bytes, chunks: list[bytes]) -> float:
    """CPU seconds (children) for one ffmpeg per chunk with the header prepended."""
    before = children_cpu()
    for chunk in chunks:
        subprocess.run([*FF, "-i", "pipe:0", *TO_PCM], input=header + chunk, capture_output=True)
    return children_cpu() - before


def ffmpeg_whole_cpu(data: bytes) -> float:
    before = children_cpu()
    subprocess.run([*FF, "-i", "pipe:0", *TO_PCM], input=data, capture_output=True, check=True)
    return children_cpu() - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="audio length")
    parser.add_argument("--repeat", type=int, default=5, help="runs of (a) and (c); best kept")
    parser.add_argument("--chunk-runs", type=int, default=1, help="runs of (b); best kept")
    args = parser.parse_args()
    seconds = args.seconds

    with tempfile.TemporaryDirectory() as tmp:
        src = make_source(Path(tmp), seconds)
        webm = encode(src, "webm-opus")
        header, chunks = webm_chunks(webm)
        others = {k: encode(src, k) for k in ("ogg-opus", "mp4-aac", "pcm-s16le-48k")}

    runs_a = [pipeline_cpu(chunks) for _ in range(args.repeat)]
    a_cpu, samples, per_feed = min(runs_a, key=lambda r: r[0])
    b_cpu = min(ffmpeg_per_chunk_cpu(header, chunks) for _ in range(args.chunk_runs))
    c_cpu = min(ffmpeg_whole_cpu(webm) for _ in range(args.repeat))

    a, b, c = a_cpu / seconds, b_cpu / seconds, c_cpu / seconds
    feed_ms = sorted(t * 1000 for t in per_feed)
    print(f"audio: {seconds:.0f} s of Chrome-shaped WebM/Opus (60 ms packets), "
          f"{len(chunks)} chunks of ~250 ms, {len(webm)} bytes; "
          f"{samples} samples out ({samples / SAMPLE_RATE:.3f} s)")  # fmt: skip
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print()
    print("CPU seconds per second of audio (lower is better):")
    print(f"  (a) StreamDecoder (this pipeline)          {a:.6f}")
    print(f"  (b) one ffmpeg per 250 ms chunk + header   {b:.6f}")
    print(f"  (c) one ffmpeg for the whole file (floor)  {c:.6f}")
    print()
    print(
        f"  b/a = {b / a:.1f}x  (pipeline is {b / a:.1f} times cheaper than ffmpeg per chunk; target >= 20)"
    )
    print(f"  a/c = {a / c:.2f}x  (pipeline vs the single-process floor; target <= 3)")
    print()
    print(f"  feed() per 250 ms chunk: median {statistics.median(feed_ms):.3f} ms, "
          f"p99 {feed_ms[int(0.99 * (len(feed_ms) - 1))]:.3f} ms, max {feed_ms[-1]:.3f} ms CPU")  # fmt: skip
    print(
        f"  per 300 ms of audio: {a * 0.3 * 1000:.3f} ms CPU; "
        f"real-time streams per core: {1 / a:.0f}"
    )
    print()
    print("(a) for the other formats, same audio, ~250 ms chunks:")
    for kind, data in others.items():
        count = round(seconds * 4)
        if kind == "pcm-s16le-48k":
            cost = min(pipeline_cpu(even_chunks(data, count), "pcm_s16le", rate=48000)[0]
                       for _ in range(args.repeat))  # fmt: skip
        else:
            cost = min(pipeline_cpu(even_chunks(data, count))[0] for _ in range(args.repeat))
        print(
            f"  {kind:15s} {cost / seconds:.6f} CPU s per s  ({seconds / cost:.0f} streams per core)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
