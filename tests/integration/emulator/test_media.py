"""PutMedia bodies from our MKV writer and from ffmpeg come back through GetMedia and
GetMediaForFragmentList (boto3) as MKV that ffprobe and mkvinfo read, with the same samples;
ListFragments and every GetMedia selector."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kvs_ingest.emulator import Emulator

from .kvsclient import (
    client,
    data_client,
    eventually,
    put_media,
    scaled,
    signed_putmedia_headers,
)
from .media import (
    ffmpeg_mkv,
    ffmpeg_pcm,
    ffprobe_audio,
    mkvinfo,
    sine,
    split_fragments,
    writer_chunks,
)

KVS_BEFORE = {
    "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
    "AWS_KINESISVIDEO_SERVER_TIMESTAMP",
    "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP",
}
KVS_AFTER = {"AWS_KINESISVIDEO_MILLIS_BEHIND_NOW", "AWS_KINESISVIDEO_CONTINUATION_TOKEN"}


async def create(emulator: Emulator, name: str) -> None:
    kvs = client("kinesisvideo", emulator.url)
    await asyncio.to_thread(kvs.create_stream, StreamName=name)


async def get_media(emulator: Emulator, stream: str, selector: dict[str, Any]) -> bytes:
    def run() -> bytes:
        media = data_client("kinesis-video-media", emulator.url, stream, "GET_MEDIA")
        answer = media.get_media(StreamName=stream, StartSelector=selector)
        assert answer["ContentType"] == "video/webm"
        return answer["Payload"].read()  # type: ignore[no-any-return]

    return await asyncio.to_thread(run)


def archived(emulator: Emulator, stream: str, api: str) -> Any:
    return data_client("kinesis-video-archived-media", emulator.url, stream, api)


async def list_fragments(emulator: Emulator, stream: str, **kw: Any) -> list[dict[str, Any]]:
    def run() -> list[dict[str, Any]]:
        am = archived(emulator, stream, "LIST_FRAGMENTS")
        frags = am.list_fragments(StreamName=stream, **kw)["Fragments"]
        return sorted(frags, key=lambda f: f["FragmentNumber"])  # type: ignore[no-any-return]

    return await asyncio.to_thread(run)


async def get_media_for_list(emulator: Emulator, stream: str, numbers: list[str]) -> bytes:
    def run() -> bytes:
        am = archived(emulator, stream, "GET_MEDIA_FOR_FRAGMENT_LIST")
        answer = am.get_media_for_fragment_list(StreamName=stream, Fragments=numbers)
        return answer["Payload"].read()  # type: ignore[no-any-return]

    return await asyncio.to_thread(run)


def check_shape(data: bytes, count: int) -> None:
    """Each fragment as real GetMedia output has it (shared/kvs-getmedia-samples)."""
    frags = split_fragments(data)
    assert len(frags) == count
    for frag in frags:
        assert frag.order[:2] == ["Info", "Tracks"]
        assert frag.order[-3:] == ["Tags", "Cluster", "Tags"]
        assert set(frag.tags[-2]) == KVS_BEFORE
        assert set(frag.tags[-1]) == KVS_AFTER
        assert (
            frag.tags[-1]["AWS_KINESISVIDEO_CONTINUATION_TOKEN"]
            == (frag.tags[-2]["AWS_KINESISVIDEO_FRAGMENT_NUMBER"])
        )


def check_readable(path: Path, expected_pcm: bytes) -> None:
    stream = ffprobe_audio(path)
    assert (stream["codec_name"], stream["sample_rate"], stream["channels"]) == (
        "pcm_s16le",
        "16000",
        1,
    )
    info = mkvinfo(path)
    assert "A_PCM/INT/LIT" in info and "AWS_KINESISVIDEO_FRAGMENT_NUMBER" in info
    assert ffmpeg_pcm(path) == expected_pcm


async def test_writer_body_round_trip(emulator: Emulator, tmp_path: Path) -> None:
    """Our writer's body returns from GetMedia/GetMediaForFragmentList with identical samples."""
    await create(emulator, "w")
    pcm = sine(3.0)
    t0 = int(time.time() * 1000) - 5000
    chunks = writer_chunks(t0, pcm, tags=[("MimeType", "audio/L16;rate=16000;channels=1")])
    result = await put_media(emulator.url, "w", chunks)
    assert result.status == 200 and result.ended == "eof"
    assert [a["FragmentTimecode"] for a in result.of("PERSISTED")] == [t0, t0 + 1000, t0 + 2000]
    numbers = [a["FragmentNumber"] for a in result.of("PERSISTED")]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3

    frags = await list_fragments(emulator, "w")
    assert [f["FragmentNumber"] for f in frags] == numbers
    assert [f["FragmentLengthInMilliseconds"] for f in frags] == [1000, 1000, 1000]
    assert [round(f["ProducerTimestamp"].timestamp() * 1000) for f in frags] == [
        t0,
        t0 + 1000,
        t0 + 2000,
    ]
    assert all(f["FragmentSizeInBytes"] > 32000 for f in frags)

    for name, data in (
        ("getmedia.mkv", await get_media(emulator, "w", {"StartSelectorType": "EARLIEST"})),
        ("list.mkv", await get_media_for_list(emulator, "w", numbers)),
    ):
        check_shape(data, 3)
        assert all(f.tags[0] == {"MimeType": "audio/L16;rate=16000;channels=1"}
                   for f in split_fragments(data))  # fmt: skip
        path = tmp_path / name
        path.write_bytes(data)
        check_readable(path, pcm)


async def test_ffmpeg_body_round_trip(emulator: Emulator, tmp_path: Path) -> None:
    """An ffmpeg-muxed body (known sizes, RELATIVE) returns with the samples ffmpeg decodes."""
    await create(emulator, "ff")
    body = ffmpeg_mkv(3.0)
    original = tmp_path / "original.mkv"
    original.write_bytes(body)
    expected = ffmpeg_pcm(original)
    start = time.time() - 10
    headers = signed_putmedia_headers(emulator.url, "ff", start=start, timecode_type="RELATIVE")
    pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    result = await put_media(emulator.url, "ff", pieces, headers=headers)
    assert result.status == 200 and not result.of("ERROR")
    count = len(result.of("PERSISTED"))
    assert count >= 3
    frags = await list_fragments(emulator, "ff")
    assert abs(frags[0]["ProducerTimestamp"].timestamp() - start) < 0.01
    for name, data in (
        ("getmedia.mkv", await get_media(emulator, "ff", {"StartSelectorType": "EARLIEST"})),
        ("list.mkv", await get_media_for_list(
            emulator, "ff", [f["FragmentNumber"] for f in frags])),
    ):  # fmt: skip
        check_shape(data, count)
        path = tmp_path / name
        path.write_bytes(data)
        check_readable(path, expected)


async def test_selectors_and_list_fragments(emulator: Emulator) -> None:
    """Every GetMedia selector starts where AWS documents; ListFragments filters and pages."""
    await create(emulator, "sel")
    t0 = int(time.time() * 1000) - 60_000
    result = await put_media(emulator.url, "sel", writer_chunks(t0, sine(3.0)))
    numbers = [a["FragmentNumber"] for a in result.of("PERSISTED")]
    assert len(numbers) == 3
    frags = await list_fragments(emulator, "sel")

    async def starts(selector: dict[str, Any]) -> list[str]:
        data = await get_media(emulator, "sel", selector)
        return [f.tags[-2]["AWS_KINESISVIDEO_FRAGMENT_NUMBER"] for f in split_fragments(data)]

    assert await starts({"StartSelectorType": "EARLIEST"}) == numbers
    assert (
        await starts({"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": numbers[1]})
        == numbers[1:]
    )
    assert (
        await starts({"StartSelectorType": "CONTINUATION_TOKEN", "ContinuationToken": numbers[0]})
        == numbers[1:]
    )
    assert (
        await starts(
            {"StartSelectorType": "PRODUCER_TIMESTAMP", "StartTimestamp": (t0 + 1500) / 1000}
        )
        == numbers[1:]
    )
    assert (
        await starts(
            {"StartSelectorType": "SERVER_TIMESTAMP", "StartTimestamp": frags[2]["ServerTimestamp"]}
        )
        == numbers[2:]
    )
    missing = await get_media(
        emulator, "sel", {"StartSelectorType": "FRAGMENT_NUMBER", "AfterFragmentNumber": "1" * 47}
    )
    assert b"AWS_KINESISVIDEO_ERROR_ID" in missing and b"4000" in missing

    # NOW: only what is persisted after the request
    now_task = asyncio.create_task(starts({"StartSelectorType": "NOW"}))
    await eventually(lambda: emulator.stats.calls["GetMedia"]["sel"] == 7, "GetMedia NOW")
    later = await put_media(emulator.url, "sel", writer_chunks(t0 + 3000, sine(1.0)))
    assert await asyncio.wait_for(now_task, scaled(20)) == [
        later.of("PERSISTED")[0]["FragmentNumber"]
    ]

    ranged = await list_fragments(
        emulator,
        "sel",
        FragmentSelector={
            "FragmentSelectorType": "PRODUCER_TIMESTAMP",
            "TimestampRange": {
                "StartTimestamp": (t0 + 500) / 1000,
                "EndTimestamp": (t0 + 2000) / 1000,
            },
        },
    )
    assert [f["FragmentNumber"] for f in ranged] == numbers[1:3]

    def pages() -> list[int]:
        am = archived(emulator, "sel", "LIST_FRAGMENTS")
        sizes, token = [], None
        while True:
            kw = {"NextToken": token} if token else {}
            answer = am.list_fragments(StreamName="sel", MaxResults=3, **kw)
            sizes.append(len(answer["Fragments"]))
            token = answer.get("NextToken")
            if not token:
                return sizes

    assert await asyncio.to_thread(pages) == [3, 1]


async def test_archived_media_errors(emulator: Emulator) -> None:
    """Unknown streams and fragments, and bad selectors, get AWS's error names via boto3."""
    await create(emulator, "err")

    def run() -> list[tuple[str, int]]:
        media = data_client("kinesis-video-media", emulator.url, "err", "GET_MEDIA")
        am = archived(emulator, "err", "LIST_FRAGMENTS")
        calls = [
            lambda: media.get_media(StreamName="nope", StartSelector={"StartSelectorType": "NOW"}),
            lambda: media.get_media(StreamName="err", StartSelector={"StartSelectorType": "X"}),
            lambda: am.list_fragments(StreamName="nope"),
            lambda: am.list_fragments(
                StreamName="err",
                FragmentSelector={
                    "FragmentSelectorType": "PRODUCER_TIMESTAMP",
                    "TimestampRange": {"StartTimestamp": 10, "EndTimestamp": 5},
                },
            ),
            lambda: am.get_media_for_fragment_list(StreamName="err", Fragments=["1" * 47]),
            lambda: am.get_media_for_fragment_list(StreamName="nope", Fragments=["1"]),
        ]
        codes = []
        for fn in calls:
            with pytest.raises(ClientError) as exc:
                fn()
            err = exc.value.response
            codes.append((err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]))
        return codes

    assert await asyncio.to_thread(run) == [
        ("ResourceNotFoundException", 404),
        ("InvalidArgumentException", 400),
        ("ResourceNotFoundException", 404),
        ("InvalidArgumentException", 400),
        ("ResourceNotFoundException", 404),
        ("ResourceNotFoundException", 404),
    ]
