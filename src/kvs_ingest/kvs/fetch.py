"""`kvs-ingest fetch`: a session's audio read back from KVS (AWS or the emulator) into a WAV.

ListFragments (by producer timestamp, paged) then GetMediaForFragmentList in batches, sorted by
producer time; or `--get-media` for GetMedia from EARLIEST. The MKV is parsed with
`kvs_ingest.mkv` (`MediaExtractor`) and written as 16 kHz mono s16 with the stdlib `wave`.
Gaps between fragments are printed; they are filled with silence only with `--fill-gaps`.
`--input FILE` reads a saved GetMedia body instead of calling KVS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import wave
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvs_ingest.config import KvsBackend, Settings, load_settings
from kvs_ingest.kvs.control import DEFAULT_REGION, EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY
from kvs_ingest.kvs.limits import SAMPLE_RATE
from kvs_ingest.kvs.media import FragmentAudio, MediaExtractor, assemble
from kvs_ingest.mkv import MkvError

_BATCH = 1000  # GetMediaForFragmentList takes at most 1000 fragment numbers
_READ = 1 << 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session", help="session id (the stream is named from it)")
    parser.add_argument("--stream", help="stream name (default: from the session id)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="WAV file to write")
    parser.add_argument("--endpoint-url", help="KVS control-plane URL (the emulator's)")
    parser.add_argument("--start", help="from this producer time (ISO 8601 or epoch seconds)")
    parser.add_argument("--end", help="up to this producer time (ISO 8601 or epoch seconds)")
    parser.add_argument(
        "--fill-gaps", action="store_true", help="fill gaps between fragments with silence"
    )
    parser.add_argument(
        "--get-media", action="store_true", help="use GetMedia from EARLIEST instead of lists"
    )
    parser.add_argument("--input", type=Path, help="parse a saved GetMedia body, no KVS calls")


def parse_time(text: str) -> datetime:
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def run(args: argparse.Namespace) -> int:
    extractor = MediaExtractor()
    try:
        if args.input is not None:
            with args.input.open("rb") as f:
                while chunk := f.read(_READ):
                    extractor.feed(chunk)
        else:
            if not (args.session or args.stream):
                print("kvs-ingest fetch: --session or --stream is required", file=sys.stderr)
                return 2
            settings = load_settings()
            stream = args.stream or settings.stream_name(args.session)
            with _control_endpoint(settings, args.endpoint_url) as endpoint:
                for chunk in _read_kvs(stream, endpoint, args):
                    extractor.feed(chunk)
        extractor.close()
    except MkvError as exc:
        print(f"kvs-ingest fetch: the media is not valid MKV: {exc}", file=sys.stderr)
        return 1
    except _FetchError as exc:
        print(f"kvs-ingest fetch: {exc}", file=sys.stderr)
        return 1
    for tag in extractor.error_tags:
        print(f"KVS reported an error: {tag}", file=sys.stderr)
    if not extractor.fragments:
        if extractor.skipped:
            codecs = ", ".join(sorted(extractor.other_codecs)) or "none"
            print(
                f"kvs-ingest fetch: no 16 kHz mono PCM audio track in {len(extractor.skipped)} "
                f"fragment(s); tracks found: {codecs}",
                file=sys.stderr,
            )
        else:
            print(
                f"kvs-ingest fetch: no media clusters found ({extractor.tags_seen} tags only)",
                file=sys.stderr,
            )
        return 1
    pcm, gaps = assemble(extractor.fragments, fill_gaps=args.fill_gaps)
    for gap in gaps:
        at = datetime.fromtimestamp(gap.after_ms / 1000, UTC).isoformat(timespec="milliseconds")
        kind = "gap" if gap.ms > 0 else "overlap"
        filled = " (filled with silence)" if args.fill_gaps and gap.ms > 0 else ""
        print(f"{kind} of {abs(gap.ms):.0f} ms after {at}{filled}")
    _write_wav(args.output, pcm)
    first = min(f.start_ms for f in extractor.fragments)
    print(
        f"{len(extractor.fragments)} fragments, {len(pcm) // 2 / SAMPLE_RATE:.3f} s of audio from "
        f"{datetime.fromtimestamp(first / 1000, UTC).isoformat(timespec='milliseconds')} "
        f"-> {args.output}"
    )
    if extractor.skipped:
        print(f"skipped {len(extractor.skipped)} fragment(s) without 16 kHz PCM audio")
    return 0


def _write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm)


class _FetchError(Exception):
    pass


class _control_endpoint:
    """The control-plane URL: given, configured, AWS's (None), or an emulator we start on the
    embedded data directory for the duration of the fetch."""

    def __init__(self, settings: Settings, endpoint_url: str | None) -> None:
        self._settings = settings
        self._url = endpoint_url
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> str | None:
        settings = self._settings
        if self._url:
            return self._url
        if settings.kvs_backend is KvsBackend.ENDPOINT:
            return settings.kvs_endpoint_url
        if settings.kvs_backend is KvsBackend.AWS or (
            settings.kvs_backend is None
            and any(
                os.environ.get(v)
                for v in ("AWS_ENDPOINT_URL_KINESIS_VIDEO", "AWS_REGION", "AWS_DEFAULT_REGION")
            )
        ):
            return None
        return self._start_embedded(settings.embedded_data_dir)

    def _start_embedded(self, data_dir: Path) -> str:
        from kvs_ingest.emulator import Emulator, EmulatorConfig

        ready = threading.Event()
        box: dict[str, Any] = {}

        async def serve() -> None:
            emulator = Emulator(EmulatorConfig(data_dir=data_dir))
            await emulator.start()
            self._stop = asyncio.Event()
            box["url"] = emulator.url
            ready.set()
            await self._stop.wait()
            await emulator.stop()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except Exception as exc:
                box["error"] = exc
                ready.set()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(30)
        if "url" not in box:
            raise _FetchError(f"could not start the embedded emulator: {box.get('error')}")
        return str(box["url"])

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)


def _clients(endpoint: str | None) -> tuple[Any, Any]:
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    if endpoint and session.get_credentials() is None:
        session.set_credentials(EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY)
    region = session.get_config_variable("region") or DEFAULT_REGION
    config = Config(retries={"mode": "standard", "max_attempts": 5}, read_timeout=120)
    control = session.create_client(
        "kinesisvideo", region_name=region, endpoint_url=endpoint, config=config
    )
    return session, control


def _read_kvs(stream: str, endpoint: str | None, args: argparse.Namespace) -> Iterator[bytes]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        session, control = _clients(endpoint)
        region = control.meta.region_name

        def data_client(service: str, api: str) -> Any:
            url = control.get_data_endpoint(StreamName=stream, APIName=api)["DataEndpoint"]
            return session.create_client(service, region_name=region, endpoint_url=url)

        if args.get_media:
            media = data_client("kinesis-video-media", "GET_MEDIA")
            selector: dict[str, Any] = {"StartSelectorType": "EARLIEST"}
            if args.start:
                selector = {
                    "StartSelectorType": "PRODUCER_TIMESTAMP",
                    "StartTimestamp": parse_time(args.start),
                }
            payload = media.get_media(StreamName=stream, StartSelector=selector)["Payload"]
            yield from _chunks(payload)
            return
        archived = data_client("kinesis-video-archived-media", "LIST_FRAGMENTS")
        fragments = _list_fragments(archived, stream, args)
        if not fragments:
            return
        fragments.sort(key=lambda f: (f["ProducerTimestamp"], int(f["FragmentNumber"])))
        numbers = [f["FragmentNumber"] for f in fragments]
        getter = data_client("kinesis-video-archived-media", "GET_MEDIA_FOR_FRAGMENT_LIST")
        for i in range(0, len(numbers), _BATCH):
            payload = getter.get_media_for_fragment_list(
                StreamName=stream, Fragments=numbers[i : i + _BATCH]
            )["Payload"]
            yield from _chunks(payload)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise _FetchError(f"{err.get('Code')}: {err.get('Message')}") from None
    except BotoCoreError as exc:
        raise _FetchError(str(exc)) from None


def _chunks(payload: Any) -> Iterator[bytes]:
    while chunk := payload.read(_READ):
        yield chunk


def _list_fragments(client: Any, stream: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"StreamName": stream, "MaxResults": 1000}
    if args.start or args.end:
        start = parse_time(args.start) if args.start else datetime.fromtimestamp(0, UTC)
        end = parse_time(args.end) if args.end else datetime(9999, 1, 1, tzinfo=UTC)
        params["FragmentSelector"] = {
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {"StartTimestamp": start, "EndTimestamp": end},
        }
    out: list[dict[str, Any]] = []
    while True:
        page = client.list_fragments(**params)
        out += page.get("Fragments", [])
        token = page.get("NextToken")
        if not token:
            return out
        params = {"StreamName": stream, "NextToken": token, "MaxResults": 1000}


def fragments_of(data: bytes) -> list[FragmentAudio]:
    """The audio fragments in a GetMedia body (for tests and tools)."""
    extractor = MediaExtractor()
    extractor.feed(data)
    extractor.close()
    return extractor.fragments


def main(argv: list[str] | None = None) -> int:
    """`python -m kvs_ingest.kvs.fetch ...`: the same as `kvs-ingest fetch ...`."""
    parser = argparse.ArgumentParser(prog="kvs-ingest fetch", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
