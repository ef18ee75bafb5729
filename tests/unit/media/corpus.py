"""Test streams for the media pipeline: ffmpeg-made files, browser-like WebM built from real Opus
packets, and the real-browser corpus under tests/data/browser when it is on disk.

Each `Stream` is a list of chunks (one WebSocket message each) plus what it should decode to.
The oracle is always ffmpeg on the concatenated bytes, never our own code.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvs_ingest.mkv import writer as w
from kvs_ingest.mkv.ids import ID

REPO = Path(__file__).resolve().parents[3]
BROWSER_CORPUS = REPO / "tests" / "data" / "browser"
TIME_FACTOR = float(os.environ.get("KVS_INGEST_TEST_TIME_FACTOR", "1"))
OPUS_FRAME_16K = 960  # one 60 ms Opus packet at 16 kHz: the "± one frame" of the acceptance
AAC_FRAME_16K = 342  # one 1024-sample AAC frame at 48 kHz, at 16 kHz (rounded up)
_FF = ("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y")


@dataclass(frozen=True)
class Stream:
    name: str
    chunks: list[bytes]
    format: str  # what StreamDecoder should sniff (or be told, for raw PCM)
    declared: dict[str, int] = field(default_factory=dict)  # rate/channels for raw PCM
    restarts: tuple[int, ...] = ()  # chunk indexes where a new recorder starts
    frame_16k: int = OPUS_FRAME_16K  # one codec frame at 16 kHz, the count tolerance
    oracle_input: tuple[str, ...] = ()  # ffmpeg input options (raw PCM)
    meta: dict[str, object] = field(default_factory=dict)  # a browser recording's meta.json

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def segments(self) -> list[bytes]:
        """The bytes of each recorder's run (split at restarts), for the oracle."""
        cuts = [0, *self.restarts, len(self.chunks)]
        return [b"".join(self.chunks[a:b]) for a, b in itertools.pairwise(cuts)]


def run_ffmpeg(*args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run(
        [*_FF, *args], input=stdin, capture_output=True, check=True, timeout=120 * TIME_FACTOR
    )
    return done.stdout


def oracle_pcm(stream: Stream, tmp: Path) -> np.ndarray:
    """ffmpeg's decode of each recorder's run to 16 kHz mono s16, concatenated."""
    parts = []
    for i, segment in enumerate(stream.segments()):
        path = tmp / f"{stream.name.replace('/', '_')}-{i}.bin"
        path.write_bytes(segment)
        out = run_ffmpeg(
            *stream.oracle_input, "-i", str(path), "-ar", "16000", "-ac", "1", "-f", "s16le", "-"
        )
        parts.append(np.frombuffer(out, np.int16))
    return np.concatenate(parts)


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- sources ---------------------------------------------------------------------------------


def make_source(tmp: Path, seconds: float = 4.0) -> Path:
    """Stereo 48 kHz: espeak-ng speech on the left, a 440 Hz tone under it on the right."""
    speech = tmp / "speech.wav"
    subprocess.run(
        [
            "espeak-ng",
            "-w",
            str(speech),
            "Testing the media pipeline, one two three. "
            "The quick brown fox jumps over the lazy dog.",
        ],
        check=True,
        capture_output=True,
        timeout=60 * TIME_FACTOR,
    )
    src = tmp / "source.wav"
    run_ffmpeg(
        "-i",
        str(speech),
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:sample_rate=48000:duration={seconds}",
        "-filter_complex",
        "[0]aresample=48000,apad[s];[s][1]amix=inputs=2:duration=shortest,"
        "pan=stereo|c0=c0|c1=0.3*c0+0.7*c1",
        "-ar",
        "48000",
        str(src),
    )
    return src


def make_sine(tmp: Path, freq: float = 1000.0, seconds: float = 2.0) -> Path:
    path = tmp / f"sine-{int(freq)}.wav"
    run_ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency={freq}:sample_rate=48000:duration={seconds}",
        "-ac",
        "2",
        str(path),
    )
    return path


_FRAGMENTED = (
    "-movflags",
    "frag_keyframe+empty_moov+default_base_moof",
    "-frag_duration",
    "250000",
)


def encode(src: Path, kind: str) -> bytes:
    """`src` encoded the way each supported container/codec pair comes from ffmpeg."""
    opus = ("-c:a", "libopus", "-b:a", "32k")
    args: dict[str, tuple[str, ...]] = {
        "webm-opus": (
            *opus,
            "-frame_duration",
            "60",
            "-f",
            "webm",
            "-live",
            "1",
            "-cluster_time_limit",
            "250",
        ),
        "ogg-opus": (*opus, "-frame_duration", "20", "-f", "ogg"),
        "mp4-aac": ("-c:a", "aac", "-b:a", "64k", *_FRAGMENTED, "-f", "mp4"),
        "mp4-opus": (*opus, *_FRAGMENTED, "-f", "mp4"),
        "mka-f32": ("-c:a", "pcm_f32le", "-f", "matroska", "-live", "1"),
        "mka-s16-44k": ("-c:a", "pcm_s16le", "-ar", "44100", "-f", "matroska", "-live", "1"),
        "raw-s16-22k": ("-f", "s16le", "-ar", "22050", "-ac", "2"),
    }[kind]
    return run_ffmpeg("-i", str(src), *args, "-")


def ogg_opus_packets(ogg: bytes) -> tuple[bytes, list[bytes]]:
    """OpusHead and audio packets of an Ogg/Opus file, split by ffmpeg (not by our demuxer)."""
    # ffmpeg's "data" muxer with -c copy writes the packets back to back; we need boundaries,
    # so ask for the framed "nut"-free route: one packet per line of ffprobe's output.
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_packets",
            "-show_data",
            "-select_streams",
            "a:0",
            "-of",
            "json",
            "-i",
            "-",
        ],
        input=ogg,
        capture_output=True,
        check=True,
        timeout=60 * TIME_FACTOR,
    )
    packets = []
    for item in json.loads(probe.stdout)["packets"]:
        packets.append(_hexdump_bytes(item["data"]))
    extradata = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_streams",
            "-show_data",
            "-select_streams",
            "a:0",
            "-of",
            "json",
            "-i",
            "-",
        ],
        input=ogg,
        capture_output=True,
        check=True,
        timeout=60 * TIME_FACTOR,
    )
    stream = json.loads(extradata.stdout)["streams"][0]
    return _hexdump_bytes(stream["extradata"]), packets


def _hexdump_bytes(dump: str) -> bytes:
    """Bytes back from ffprobe's hexdump lines ("00000000: 4f70 7573 ...  OpusHead...")."""
    out = bytearray()
    for line in dump.strip().splitlines():
        hexpart = line.split(":", 1)[1][:41]
        out += bytes.fromhex(hexpart.replace(" ", ""))
    return bytes(out)


def browser_like_webm(
    head: bytes,
    packets: list[bytes],
    *,
    track: int = 1,
    rate: float = 48000.0,
    channels: int = 2,
    packet_ms: int = 60,
    lace: int = 1,
) -> tuple[bytes, list[int]]:
    """WebM as MediaRecorders write it: unknown-size Segment and Clusters, one Opus track.

    `track=2, rate=44100` is Firefox's shape; `lace>1` packs that many packets per SimpleBlock
    with Xiph lacing. Returns the bytes and the offset of every SimpleBlock.
    """
    blocks: list[int] = []
    out = bytearray(w.ebml_header("webm"))
    out += w.segment_header()
    out += w.info(b"\x01" * 16)
    out += w.tracks(
        w.AudioTrack(
            number=track,
            uid=7,
            codec_id="A_OPUS",
            sampling_frequency=rate,
            channels=channels,
            bit_depth=32,
            codec_private=head,
        )
    )
    timecode = 0
    per_cluster = max(1, 1000 // packet_ms)
    for start in range(0, len(packets), per_cluster):
        out += w.cluster_header(timecode)
        group = packets[start : start + per_cluster]
        for i in range(0, len(group), lace):
            frames = group[i : i + lace]
            rel = i * packet_ms
            blocks.append(len(out))
            if len(frames) == 1:
                out += w.simple_block(track, rel, frames[0])
            else:
                out += _laced_block(track, rel, frames)
        timecode += per_cluster * packet_ms
    return bytes(out), blocks


def _laced_block(track: int, rel: int, frames: list[bytes]) -> bytes:
    sizes = bytearray()
    for frame in frames[:-1]:
        n = len(frame)
        sizes += b"\xff" * (n // 255) + bytes([n % 255])
    payload = bytes([0x80 | track]) + rel.to_bytes(2, "big", signed=True) + b"\x82"
    payload += bytes([len(frames) - 1]) + sizes + b"".join(frames)
    return w.element(ID.SIMPLE_BLOCK, payload)


def cut_like_browser(data: bytes, blocks: list[int], every: int, inside: int = 1) -> list[bytes]:
    """Chunks whose cuts fall `inside` bytes into a SimpleBlock, as Chrome's chunks do."""
    cuts = [offset + inside for offset in blocks[every::every]]
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# --- the corpus --------------------------------------------------------------------------------


def build_ffmpeg_streams(tmp: Path) -> dict[str, Stream]:
    src = make_source(tmp)
    streams: dict[str, Stream] = {}
    for kind in ("webm-opus", "ogg-opus", "mp4-aac", "mp4-opus", "mka-f32", "mka-s16-44k"):
        data = encode(src, kind)
        fmt = {"webm": "webm", "ogg": "ogg", "mp4": "mp4", "mka": "webm"}[kind.split("-")[0]]
        frame = AAC_FRAME_16K if kind == "mp4-aac" else OPUS_FRAME_16K
        streams[kind] = Stream(kind, split_every(data, 4000), fmt, frame_16k=frame)
    raw = encode(src, "raw-s16-22k")
    streams["raw-s16-22k"] = Stream(
        "raw-s16-22k",
        split_every(raw, 22050),
        "pcm_s16le",
        {"rate": 22050, "channels": 2},
        frame_16k=1,
        oracle_input=("-f", "s16le", "-ar", "22050", "-ac", "2"),
    )
    head, packets = ogg_opus_packets(encode_60ms_ogg(src))
    chrome, blocks = browser_like_webm(head, packets)
    streams["chrome-like-webm"] = Stream(
        "chrome-like-webm", cut_like_browser(chrome, blocks, 4), "webm"
    )
    firefox, blocks = browser_like_webm(head, packets, track=2, rate=44100.0)
    streams["firefox-like-webm"] = Stream(
        "firefox-like-webm", cut_like_browser(firefox, blocks, 4), "webm"
    )
    laced, _ = browser_like_webm(head, packets, lace=3)
    streams["laced-webm"] = Stream("laced-webm", split_every(laced, 1000), "webm")
    # A restarted recorder: the page stops MediaRecorder and starts a new one on the socket.
    first, second = split_every(chrome, 3000), split_every(firefox, 3000)
    streams["restarted-webm"] = Stream(
        "restarted-webm", first + second, "webm", restarts=(len(first),)
    )
    ogg = encode(src, "ogg-opus")
    streams["restarted-ogg"] = Stream(
        "restarted-ogg", [ogg[:5000], ogg[5000:], ogg], "ogg", restarts=(2,)
    )
    mp4 = encode(src, "mp4-aac")
    streams["restarted-mp4"] = Stream(
        "restarted-mp4", [mp4, mp4[:7], mp4[7:]], "mp4", restarts=(1,), frame_16k=AAC_FRAME_16K
    )
    return streams


def encode_60ms_ogg(src: Path) -> bytes:
    return run_ffmpeg(
        "-i", str(src), "-c:a", "libopus", "-b:a", "32k", "-frame_duration", "60", "-f", "ogg", "-"
    )


def browser_streams() -> list[Stream]:
    """Every recording under tests/data/browser/<browser>/<name>/ (none until it is recorded)."""
    streams = []
    for meta_path in sorted(BROWSER_CORPUS.glob("*/*/meta.json")):
        folder = meta_path.parent
        chunks = [p.read_bytes() for p in sorted(folder.glob("chunk-*.bin"))]
        if not chunks:
            continue
        meta = json.loads(meta_path.read_text())
        mime = str(meta.get("mimeType") or meta.get("recorder_mime_type") or "")
        fmt = "ogg" if "ogg" in mime else "mp4" if "mp4" in mime else "webm"
        restart = meta.get("restarted_at_chunk")
        codec = str((meta.get("container") or {}).get("codec", ""))
        frame = (
            AAC_FRAME_16K if codec == "aac" else 1 if codec.startswith("pcm") else OPUS_FRAME_16K
        )
        streams.append(
            Stream(
                f"{folder.parent.name}/{folder.name}",
                chunks,
                fmt,
                restarts=(int(restart),) if restart else (),
                frame_16k=frame,
                meta=meta,
            )
        )
    return streams


def best_alignment(ours: np.ndarray, oracle: np.ndarray, max_lag: int = 2000) -> tuple[int, float]:
    """Lag (ours later by `lag` samples) that maximises correlation, and that correlation."""
    a = ours.astype(np.float64)
    b = oracle.astype(np.float64)
    n = min(len(a), len(b))
    window = min(n, 16000 * 2)
    best = (0, -2.0)
    # Coarse search by FFT cross-correlation over the first seconds, then a precise check.
    size = 1 << (2 * window + max_lag).bit_length()
    spec = np.fft.rfft(a[:window], size) * np.conj(np.fft.rfft(b[:window], size))
    xc = np.fft.irfft(spec, size)
    lags = list(range(-max_lag, max_lag + 1))
    scores = [xc[lag % size] for lag in lags]
    lag = lags[int(np.argmax(scores))]
    x = a[max(0, lag) :]
    y = b[max(0, -lag) :]
    m = min(len(x), len(y))
    if m < 100:
        return best
    corr = float(np.corrcoef(x[:m], y[:m])[0, 1])
    return lag, corr


def peak_frequency(pcm: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])
