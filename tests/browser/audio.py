"""Sources the fake microphones play, and the checks that compare what KVS holds with them.

Oracles come from outside our code: espeak-ng and sox make the speech, ffmpeg decodes the
browser's own chunks, numpy does the spectra and correlations.
"""

from __future__ import annotations

import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RATE = 16000
SOURCE_RATE = 48000
TWO_TONE = (440.0, 1500.0)
SPEECH_TEXT = (
    "Every fragment of this talk goes into Kinesis. "
    "The quick brown fox jumps over the lazy dog. "
    "One, two, three, four, five."
)


@dataclass(frozen=True)
class Source:
    """A WAV for the fake microphone (48 kHz mono) and the same audio at 16 kHz to compare."""

    path: Path
    reference: np.ndarray  # 16 kHz mono float64


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    pcm = np.clip(samples * 32767.0, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768


def two_tone_source(folder: Path, seconds: float = 6.0) -> Source:
    """440 + 1500 Hz, 0.3 each; a whole number of periods of both so the loop is seamless."""
    path = folder / "two-tone.wav"
    t = np.arange(int(seconds * SOURCE_RATE)) / SOURCE_RATE
    write_wav(path, sum(0.3 * np.sin(2 * np.pi * f * t) for f in TWO_TONE), SOURCE_RATE)
    ref_t = np.arange(int(seconds * RATE)) / RATE
    return Source(path, sum(0.3 * np.sin(2 * np.pi * f * ref_t) for f in TWO_TONE))


def speech_source(folder: Path) -> Source:
    """espeak-ng speech, resampled by sox to 48 kHz for the browser and 16 kHz to compare."""
    raw = folder / "speech-raw.wav"
    subprocess.run(["espeak-ng", "-s", "160", "-w", str(raw), SPEECH_TEXT], check=True)
    path = folder / "speech.wav"
    ref = folder / "speech-16k.wav"
    for out, rate in ((path, SOURCE_RATE), (ref, RATE)):
        subprocess.run(
            ["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out), "norm", "-3"],
            check=True,
        )
    return Source(path, read_wav(ref))


def ffmpeg_decode(data: bytes) -> np.ndarray:
    """What ffmpeg hears in a byte stream (one recorder's chunks concatenated), 16 kHz mono."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", str(RATE),
         "pipe:1"],
        input=data,
        capture_output=True,
        check=True,
        timeout=120,
    )  # fmt: skip
    return np.frombuffer(out.stdout, "<i2").astype(np.float64) / 32768


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0


def spectral_peaks(x: np.ndarray, count: int) -> list[float]:
    """The `count` strongest frequencies (Hz), at least 50 Hz apart, of a Hann-windowed FFT."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    peaks: list[float] = []
    for i in np.argsort(spectrum)[::-1]:
        if all(abs(freqs[i] - p) >= 50 for p in peaks):
            peaks.append(float(freqs[i]))
        if len(peaks) == count:
            break
    return sorted(peaks)


def best_correlation(x: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """The highest normalised correlation of `x` against the looped `reference`, and its lag.

    The fake microphone loops the file from wherever it was when the recorder started, so the
    alignment is unknown: circular cross-correlation over one period of the reference."""
    n = len(reference)
    x = x[: n * 4]
    looped = np.tile(reference, len(x) // n + 2)
    size = 1 << int(np.ceil(np.log2(len(looped) + len(x))))
    corr = np.fft.irfft(np.fft.rfft(looped, size) * np.conj(np.fft.rfft(x, size)), size)[:n]
    lag = int(np.argmax(corr))
    aligned = looped[lag : lag + len(x)]
    denom = np.linalg.norm(aligned) * np.linalg.norm(x)
    return (float(np.dot(aligned, x) / denom) if denom else 0.0), lag


def windowed_correlation(x: np.ndarray, reference: np.ndarray, *, window_s: float = 1.0) -> float:
    """The median over `window_s` windows of each one's best correlation with the looped
    reference: the source's waveform everywhere, yet robust to the odd glitch of a fake
    capture device on a loaded machine (which shifts the alignment of everything after it)."""
    size = int(window_s * RATE)
    scores = [
        best_correlation(x[i : i + size], reference)[0]
        for i in range(0, len(x) - size + 1, size)
        if rms(x[i : i + size]) >= 0.01
    ]
    return float(np.median(scores)) if scores else 0.0


def aligned_correlation(x: np.ndarray, y: np.ndarray, *, max_lag: int = RATE // 20) -> float:
    """Normalised correlation of two renderings of the same audio at their best lag within
    ±`max_lag` samples (different decoders and resamplers delay a little differently)."""
    n = min(len(x), len(y)) - 2 * max_lag
    if n <= 0:
        return 0.0
    a = x[max_lag : max_lag + n]
    seg = y[: n + 2 * max_lag]
    size = 1 << int(np.ceil(np.log2(len(seg) + n)))
    # corr[k] = sum_i a[i] * seg[k + i] for k = 0 .. 2 * max_lag
    corr = np.fft.irfft(np.fft.rfft(seg, size) * np.conj(np.fft.rfft(a, size)), size)
    corr = corr[: 2 * max_lag + 1]
    energy = np.concatenate(([0.0], np.cumsum(seg**2)))
    window = np.sqrt(np.maximum(energy[n : n + 2 * max_lag + 1] - energy[: 2 * max_lag + 1], 0))
    denom = np.linalg.norm(a) * window
    valid = denom > 0
    return float(np.max(corr[valid] / denom[valid])) if valid.any() else 0.0


def silent_runs(x: np.ndarray, *, window_ms: int = 20, threshold: float = 0.01) -> list[float]:
    """Lengths (ms) of the runs of windows whose RMS is below `threshold`."""
    w = RATE * window_ms // 1000
    frames = x[: len(x) // w * w].reshape(-1, w)
    quiet = np.sqrt(np.mean(frames**2, axis=1)) < threshold
    runs: list[float] = []
    length = 0
    for q in quiet:
        if q:
            length += 1
        elif length:
            runs.append(length * window_ms)
            length = 0
    if length:
        runs.append(length * window_ms)
    return runs
