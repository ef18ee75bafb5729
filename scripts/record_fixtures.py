"""Records the browser test corpus (tests/data/browser/) with real headless browsers.

Run by `make fixtures`. For every audio mimeType a browser's `MediaRecorder.isTypeSupported`
accepts, it records a few seconds at timeslices of 250 and 1000 ms, plus recordings whose
recorder is stopped and a new one started mid-stream, and saves each `dataavailable` Blob exactly
as the browser produced it:

    tests/data/browser/<browser>/<name>/chunk-0000.bin ...
    tests/data/browser/<browser>/<name>/meta.json

Chromium (Debian's, driven by Playwright) hears a WAV file through its fake capture device
(`--use-file-for-fake-audio-capture`, looped). Firefox (firefox-esr over WebDriver BiDi, see
tests/browser/firefox.py) has only a fake sine tone as microphone, so its other sources are played
from the WAV through Web Audio into a MediaStream. The page runs on a loopback HTTP server of
this script and POSTs every chunk back to it. Only loopback is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from playwright.async_api import Page, async_playwright

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.browser.firefox import WEB_AUDIO_PREFS, Firefox, firefox_path  # noqa: E402

OUT = REPO / "tests" / "data" / "browser"
RATE = 48000
SPEECH_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Kinesis video streams keep every fragment. "
    "Seven, eight, nine, ten."
)
FIREFOX_FAKE_HZ = 1000  # Firefox's default media.navigator.audio.fake_frequency

# mimeTypes worth asking for; each browser records those its isTypeSupported accepts. Bare
# "audio/webm" and "audio/mp4;codecs=opus" are left out: they give the same bytes as the
# explicit opus types.
CANDIDATE_TYPES = [
    "audio/webm;codecs=opus",
    "audio/webm;codecs=pcm",
    "audio/mp4",
    "audio/mp4;codecs=mp4a.40.2",
    "audio/x-matroska;codecs=opus",
    "audio/x-matroska;codecs=pcm",
    "audio/ogg;codecs=opus",
    "audio/webm;codecs=vorbis",
]


@dataclass(frozen=True)
class Source:
    """A synthesised 48 kHz mono WAV the browser records."""

    name: str
    kind: str  # "sine" | "two-tone" | "speech"
    path: Path
    seconds: float
    freqs: tuple[float, ...] = ()
    text: str = ""

    def meta(self, capture: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            "kind": self.kind,
            "sample_rate": RATE,
            "seconds": round(self.seconds, 3),
            "capture": capture,
        }
        if self.freqs:
            info["freqs"] = list(self.freqs)
        if self.text:
            info["text"] = self.text
        return info


@dataclass(frozen=True)
class Job:
    """One recording: a mimeType at a timeslice, optionally restarted mid-stream."""

    name: str
    mime: str
    timeslice: int
    seconds: float
    restart_after: float | None = None
    notes: tuple[str, ...] = field(default=())


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    pcm = np.clip(samples * 32767.0, -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def tones(freqs: tuple[float, ...], seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return sum(amplitude * np.sin(2 * np.pi * f * t) for f in freqs)  # type: ignore[return-value]


def synthesise_sources(folder: Path) -> dict[str, Source]:
    """The three sources: a 1 kHz sine, 440 + 1500 Hz, and espeak-ng speech (all 48 kHz)."""
    sine = Source("sine", "sine", folder / "sine-1000.wav", 4.0, freqs=(1000.0,))
    write_wav(sine.path, tones(sine.freqs, sine.seconds, 0.5))
    two = Source("two-tone", "two-tone", folder / "two-tone.wav", 4.0, freqs=(440.0, 1500.0))
    write_wav(two.path, tones(two.freqs, two.seconds))
    raw = folder / "speech-22k.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), SPEECH_TEXT], check=True)
    speech_path = folder / "speech.wav"
    subprocess.run(
        ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(speech_path), "norm", "-3"],
        check=True,
    )
    with wave.open(str(speech_path)) as w:
        seconds = w.getnframes() / w.getframerate()
    speech = Source("speech", "speech", speech_path, seconds, text=SPEECH_TEXT)
    return {s.name: s for s in (sine, two, speech)}


# The recorder page. `record(opts)` opens the source, runs one MediaRecorder (or two, for a
# restart) and POSTs every non-empty Blob, numbered, to /chunk/<id>/<n>; it resolves with what
# the browser reported.
PAGE = """<!doctype html><meta charset="utf-8"><title>recorder</title>
<script>
async function openSource(capture, sourceUrl) {
  if (capture === "fake-microphone") {
    const stream = await navigator.mediaDevices.getUserMedia({audio: {
      echoCancellation: false, noiseSuppression: false, autoGainControl: false,
      channelCount: {ideal: 1}}});
    return {stream, close: () => stream.getTracks().forEach(t => t.stop())};
  }
  // Web Audio: play the WAV (looped) into a MediaStream the recorder takes like a microphone.
  const ctx = new AudioContext({sampleRate: 48000});
  await ctx.resume();
  const data = await (await fetch(sourceUrl)).arrayBuffer();
  const buffer = await ctx.decodeAudioData(data);
  const node = ctx.createBufferSource();
  node.buffer = buffer; node.loop = true;
  const dest = ctx.createMediaStreamDestination();
  dest.channelCount = 1;
  node.connect(dest); node.start();
  return {stream: dest.stream, close: () => { node.stop(); ctx.close(); }};
}

async function record(o) {
  const src = await openSource(o.capture, o.sourceUrl);
  const settings = src.stream.getAudioTracks()[0].getSettings();
  let seq = 0, empty = 0, restartedAt = null;
  const posts = [], mimes = [];
  const t0 = performance.now();
  function start() {
    const rec = new MediaRecorder(src.stream, {mimeType: o.mime});
    const stopped = new Promise(r => rec.onstop = r);
    rec.ondataavailable = e => {
      if (e.data.size === 0) { empty++; return; }
      const n = seq++;
      posts.push(fetch(`/chunk/${o.id}/${n}`, {method: "POST", body: e.data}));
    };
    rec.start(o.timeslice);
    mimes.push(rec.mimeType);
    return {rec, stopped};
  }
  const sleep = s => new Promise(r => setTimeout(r, s * 1000));
  let cur = start();
  if (o.restartAfter !== null) {
    await sleep(o.restartAfter);
    cur.rec.stop(); await cur.stopped;
    restartedAt = seq;
    cur = start();
    await sleep(o.seconds - o.restartAfter);
  } else {
    await sleep(o.seconds);
  }
  cur.rec.stop(); await cur.stopped;
  const recordedMs = performance.now() - t0;
  const codes = (await Promise.all(posts)).map(r => r.status);
  src.close();
  return {chunks: seq, empty, restartedAt, recorderMimeTypes: mimes, settings,
          recordedMs: Math.round(recordedMs), postStatus: codes.every(c => c === 200)};
}
</script>"""


class ChunkSink:
    """The loopback HTTP server: serves the page and the sources, collects the chunks."""

    def __init__(self, sources: dict[str, Source]) -> None:
        self.sources = sources
        self.chunks: dict[str, dict[int, bytes]] = {}
        self.app = web.Application(client_max_size=64 << 20)
        self.app.router.add_get("/", self._page)
        self.app.router.add_get("/source/{name}.wav", self._source)
        self.app.router.add_post("/chunk/{rec}/{seq}", self._chunk)
        self.url = ""

    async def start(self) -> web.AppRunner:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return runner

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def _source(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(self.sources[request.match_info["name"]].path)

    async def _chunk(self, request: web.Request) -> web.Response:
        rec, seq = request.match_info["rec"], int(request.match_info["seq"])
        self.chunks.setdefault(rec, {})[seq] = await request.read()
        return web.Response(text="ok")


def save(
    sink: ChunkSink,
    rec_id: str,
    folder: Path,
    *,
    browser: str,
    version: str,
    job: Job,
    source: dict[str, Any],
    result: dict[str, Any],
) -> None:
    """Write chunk-NNNN.bin and meta.json for one finished recording."""
    got = sink.chunks.pop(rec_id, {})
    if sorted(got) != list(range(result["chunks"])) or not result["postStatus"]:
        raise RuntimeError(f"{browser}/{job.name}: chunks missing ({sorted(got)})")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for n in range(result["chunks"]):
        (folder / f"chunk-{n:04d}.bin").write_bytes(got[n])
    notes = list(job.notes)
    if result["empty"]:
        notes.append(f"{result['empty']} empty dataavailable blob(s) skipped")
    settings = result["settings"]
    if (
        source.get("sample_rate")
        and settings.get("sampleRate")
        and (
            settings.get("sampleRate") != source["sample_rate"] or settings.get("channelCount") != 1
        )
    ):
        notes.append(
            f"the capture track runs at {settings.get('sampleRate')} Hz with"
            f" {settings.get('channelCount')} channel(s); the source WAV is"
            f" {source['sample_rate']} Hz mono"
        )
    container = probe(folder)
    if container["codec"] == "opus" and container["declared_sample_rate"] not in (None, 48000):
        notes.append(
            f"the container declares {container['declared_sample_rate']} Hz for Opus, which"
            " always decodes at 48000 Hz (ffmpeg reports 48000)"
        )
    recorder_types = sorted(set(result["recorderMimeTypes"]))
    meta = {
        "browser": browser,
        "version": version,
        "mimeType": job.mime,
        "recorder_mime_type": recorder_types[0] if len(recorder_types) == 1 else recorder_types,
        "timeslice_ms": job.timeslice,
        "source": source,
        "chunks": result["chunks"],
        "restarted_at_chunk": result["restartedAt"],
        "recorded_ms": result["recordedMs"],
        "bytes": sum(len(b) for b in got.values()),
        "track_settings": {
            k: result["settings"][k]
            for k in ("sampleRate", "channelCount", "sampleSize")
            if k in result["settings"]
        },
        "container": container,
        "notes": notes,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"  {browser}/{job.name}: {meta['chunks']} chunks, {meta['bytes']} bytes, {meta['container']}"
    )


def probe(folder: Path) -> dict[str, Any]:
    """What ffprobe (an outside oracle) says the concatenated chunks declare."""
    whole = folder.parent / (folder.name + ".probe")
    whole_bytes = b"".join(p.read_bytes() for p in sorted(folder.glob("chunk-*.bin")))
    whole.write_bytes(whole_bytes)
    try:
        out = subprocess.run(
            [
                "ffprobe", "-v", "error", "-show_entries",
                "format=format_name:stream=codec_name,sample_rate,channels,sample_fmt",
                "-of", "json", str(whole),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        info = json.loads(out.stdout or "{}")
    finally:
        whole.unlink()
    stream = (info.get("streams") or [{}])[0]
    declared = declared_rate(whole_bytes)
    return {
        "declared_sample_rate": declared,
        "format": info.get("format", {}).get("format_name"),
        "codec": stream.get("codec_name"),
        "sample_rate": int(stream["sample_rate"]) if stream.get("sample_rate") else None,
        "channels": stream.get("channels"),
        "sample_fmt": stream.get("sample_fmt"),
    }


def declared_rate(data: bytes) -> int | None:
    """The rate the container itself declares: Ogg's OpusHead input rate, or Matroska's
    SamplingFrequency (mkvinfo, an outside reader). ffprobe reports 48000 for any Opus."""
    head = data.find(b"OpusHead")
    if data.startswith(b"OggS") and head >= 0:
        return int.from_bytes(data[head + 12 : head + 16], "little")
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        with tempfile.NamedTemporaryFile(suffix=".mkv") as f:
            f.write(data)
            f.flush()
            out = subprocess.run(["mkvinfo", f.name], capture_output=True, text=True, timeout=60)
        match = re.search(r"Sampling frequency: ([0-9.]+)", out.stdout)
        return int(float(match.group(1))) if match else None
    return None


def slug(mime: str) -> str:
    """audio/webm;codecs=opus -> webm-opus; audio/mp4 -> mp4."""
    container, _, codecs = mime.removeprefix("audio/").partition(";codecs=")
    container = container.removeprefix("x-")
    return f"{container}-{codecs.replace('.', '')}" if codecs else container


def jobs_for(types: list[str], main_types: set[str]) -> dict[str, list[Job]]:
    """Which recordings each source gets: every type at 250 and 1000 ms on the two-tone source;
    speech, the sine and the restarts for the main types only (PCM is big: kept short)."""
    plan: dict[str, list[Job]] = {"two-tone": [], "speech": [], "sine": []}
    for mime in types:
        # Float PCM is about 190 kB per second: kept to 1 s, and Matroska's PCM (the same
        # bytes as WebM's apart from the DocType) at 250 ms only.
        seconds = 1.0 if "pcm" in mime else 3.0
        timeslices = (250,) if mime == "audio/x-matroska;codecs=pcm" else (250, 1000)
        for ts in timeslices:
            plan["two-tone"].append(Job(f"{slug(mime)}-{ts}-two-tone", mime, ts, seconds))
        if mime in main_types:
            plan["speech"].append(Job(f"{slug(mime)}-250-speech", mime, 250, 4.0))
            plan["sine"].append(Job(f"{slug(mime)}-1000-sine", mime, 1000, 3.0))
            plan["two-tone"].append(
                Job(
                    f"{slug(mime)}-250-two-tone-restart",
                    mime,
                    250,
                    3.0,
                    restart_after=1.5,
                    notes=("recorder stopped and a new one started on the same stream",),
                )
            )
    return plan


async def supported(evaluate: Any) -> list[str]:
    result = await evaluate(
        f"{json.dumps(CANDIDATE_TYPES)}.filter(t => MediaRecorder.isTypeSupported(t))"
    )
    return list(result)


async def record_chromium(sink: ChunkSink, sources: dict[str, Source], out: Path) -> None:
    """One Chromium per source (the fake device plays one file); the recordings run in
    parallel pages of it."""
    async with async_playwright() as p:
        types: list[str] = []
        for source_name in ("two-tone", "speech", "sine"):
            source = sources[source_name]
            browser = await p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    *CHROMIUM_ARGS,
                    "--autoplay-policy=no-user-gesture-required",
                    f"--use-file-for-fake-audio-capture={source.path}",
                ],
            )
            try:
                context = await browser.new_context()
                if not types:
                    page = await context.new_page()
                    await page.goto(sink.url)
                    types = await supported(page.evaluate)
                    print(f"chromium {browser.version}: {types}")
                    await page.close()
                main = {"audio/webm;codecs=opus", "audio/mp4"}
                jobs = jobs_for(types, main)[source_name]

                async def run(
                    job: Job, page: Page, source: Source = source, version: str = browser.version
                ) -> None:
                    rec_id = f"chromium-{job.name}"
                    await page.goto(sink.url)
                    result = await page.evaluate(
                        "o => record(o)",
                        {
                            "id": rec_id,
                            "mime": job.mime,
                            "timeslice": job.timeslice,
                            "seconds": job.seconds,
                            "restartAfter": job.restart_after,
                            "capture": "fake-microphone",
                            "sourceUrl": "",
                        },
                    )
                    save(
                        sink,
                        rec_id,
                        out / "chromium" / job.name,
                        browser="chromium",
                        version=version,
                        job=job,
                        source=source.meta("fake-microphone"),
                        result=result,
                    )

                # A few at a time: a 2-core machine encodes several streams in real time
                # easily, but not a dozen.
                for start in range(0, len(jobs), 4):
                    batch = jobs[start : start + 4]
                    pages = [await context.new_page() for _ in batch]
                    await asyncio.gather(*(run(j, pg) for j, pg in zip(batch, pages, strict=True)))
                    for pg in pages:
                        await pg.close()
            finally:
                await browser.close()


async def record_firefox(sink: ChunkSink, sources: dict[str, Source], out: Path) -> None:
    """firefox-esr: the fake microphone is a sine tone; other sources come in via Web Audio."""
    prefs = {**WEB_AUDIO_PREFS, "media.navigator.audio.fake_frequency": FIREFOX_FAKE_HZ}
    async with await Firefox.launch(prefs=prefs) as ff:
        tab = await ff.new_tab()
        await ff.navigate(tab, sink.url)
        types = await supported(lambda expr: ff.evaluate_json(tab, expr))
        print(f"firefox {ff.version}: {types}")
        fake_tone = {
            "kind": "sine",
            "freqs": [FIREFOX_FAKE_HZ],
            "sample_rate": None,
            "seconds": None,
            "capture": "fake-microphone",
        }
        plan: list[tuple[Job, str, dict[str, Any], str]] = []
        for mime in types:
            for ts in (250, 1000):
                job = Job(
                    f"{slug(mime)}-{ts}-sine",
                    mime,
                    ts,
                    3.0,
                    notes=("Firefox's fake microphone: a generated sine, not a file",),
                )
                plan.append((job, "fake-microphone", fake_tone, ""))
            plan.append(
                (
                    Job(f"{slug(mime)}-250-two-tone", mime, 250, 3.0),
                    "webaudio",
                    sources["two-tone"].meta("webaudio"),
                    "/source/two-tone.wav",
                )
            )
            plan.append(
                (
                    Job(f"{slug(mime)}-250-speech", mime, 250, 4.0),
                    "webaudio",
                    sources["speech"].meta("webaudio"),
                    "/source/speech.wav",
                )
            )
            plan.append(
                (
                    Job(
                        f"{slug(mime)}-250-sine-restart",
                        mime,
                        250,
                        3.0,
                        restart_after=1.5,
                        notes=("recorder stopped and a new one started on the same stream",),
                    ),
                    "fake-microphone",
                    fake_tone,
                    "",
                )
            )

        async def run(job: Job, capture: str, source: dict[str, Any], url: str) -> None:
            rec_id = f"firefox-{job.name}"
            page = await ff.new_tab()
            await ff.navigate(page, sink.url)
            opts = {
                "id": rec_id,
                "mime": job.mime,
                "timeslice": job.timeslice,
                "seconds": job.seconds,
                "restartAfter": job.restart_after,
                "capture": capture,
                "sourceUrl": url,
            }
            result = await ff.evaluate_json(page, f"record({json.dumps(opts)})")
            await ff.command("browsingContext.close", {"context": page})
            save(
                sink,
                rec_id,
                out / "firefox" / job.name,
                browser="firefox",
                version=ff.version,
                job=job,
                source=source,
                result=result,
            )

        for start in range(0, len(plan), 4):
            await asyncio.gather(*(run(*item) for item in plan[start : start + 4]))


def corpus_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--browser", choices=["chromium", "firefox", "all"], default="all")
    parser.add_argument("--out", type=Path, default=OUT, help=f"corpus folder (default {OUT})")
    args = parser.parse_args()
    out: Path = args.out
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kvs-fixtures-") as tmp:
        sources = synthesise_sources(Path(tmp))
        sink = ChunkSink(sources)
        runner = await sink.start()
        try:
            if args.browser in ("chromium", "all"):
                await record_chromium(sink, sources, out)
            if args.browser in ("firefox", "all"):
                if firefox_path() is None:
                    print("firefox-esr is not installed: Firefox corpus not recorded")
                else:
                    await record_firefox(sink, sources, out)
        finally:
            await runner.cleanup()
    total = corpus_bytes(out)
    print(f"corpus: {total / 1e6:.2f} MB in {out} ({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
