"""Restarting the emulator keeps every PERSISTED fragment; retention removes old ones."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from .conftest import StartEmulator
from .kvsclient import client, eventually, put_media, scaled
from .media import sine, split_fragments, writer_chunks
from .test_media import get_media, list_fragments


async def test_restart_keeps_persisted_fragments(start_emulator: StartEmulator) -> None:
    """A restart mid-PutMedia keeps every PERSISTED fragment and the stream, not the open one."""
    first = await start_emulator()
    kvs = client("kinesisvideo", first.url)
    await asyncio.to_thread(
        kvs.create_stream, StreamName="keep", DataRetentionInHours=0, Tags={"k": "v"}
    )
    info = (await asyncio.to_thread(kvs.describe_stream, StreamName="keep"))["StreamInfo"]
    pcm = sine(3.0)
    t0 = int(time.time() * 1000) - 60_000
    chunks = writer_chunks(t0, pcm + sine(0.4))  # 3 full fragments and a partial fourth
    hold, three_persisted = asyncio.Event(), asyncio.Event()
    seen: list[str] = []

    def on_ack(ack: dict[str, object]) -> None:
        if ack["EventType"] == "PERSISTED":
            seen.append(str(ack["FragmentNumber"]))
            if len(seen) == 3:
                three_persisted.set()

    task = asyncio.create_task(put_media(first.url, "keep", chunks, hold_open=hold, on_ack=on_ack))
    await asyncio.wait_for(three_persisted.wait(), scaled(10))
    await first.stop()  # mid-request: the fourth fragment is still open
    result = await asyncio.wait_for(task, scaled(10))
    persisted = [a["FragmentNumber"] for a in result.of("PERSISTED")]
    assert len(persisted) == 3 and result.ended == "dropped"

    second = await start_emulator()
    kvs = client("kinesisvideo", second.url)
    again = (await asyncio.to_thread(kvs.describe_stream, StreamName="keep"))["StreamInfo"]
    assert (again["StreamARN"], again["Version"], again["Status"]) == (
        info["StreamARN"],
        info["Version"],
        "ACTIVE",
    )
    assert (await asyncio.to_thread(kvs.list_tags_for_stream, StreamName="keep"))["Tags"] == {
        "k": "v"
    }
    frags = await list_fragments(second, "keep")
    assert [f["FragmentNumber"] for f in frags] == persisted
    data = await get_media(second, "keep", {"StartSelectorType": "EARLIEST"})
    assert b"".join(f.pcm for f in split_fragments(data)) == pcm
    later = await put_media(second.url, "keep", writer_chunks(t0 + 4000, sine(1.0)))
    assert later.of("PERSISTED")[0]["FragmentNumber"] > persisted[-1]


async def test_retention_removes_old_fragments(start_emulator: StartEmulator) -> None:
    """Fragments past retention leave ListFragments and the disk; retention 0 keeps all."""
    emulator = await start_emulator(retention_hour_seconds=scaled(2.0))
    kvs = client("kinesisvideo", emulator.url)
    await asyncio.to_thread(kvs.create_stream, StreamName="short", DataRetentionInHours=1)
    await asyncio.to_thread(kvs.create_stream, StreamName="forever", DataRetentionInHours=0)
    t0 = int(time.time() * 1000) - 60_000
    for name in ("short", "forever"):
        result = await put_media(emulator.url, name, writer_chunks(t0, sine(2.0)))
        assert len(result.of("PERSISTED")) == 2
    assert len(await list_fragments(emulator, "short")) == 2
    frag_dir = Path(emulator.config.data_dir) / "streams" / "short" / "fragments"
    assert len(list(frag_dir.glob("*.mkv"))) == 2
    await eventually(lambda: not list(frag_dir.glob("*.mkv")), "retention sweep", 10)
    assert await list_fragments(emulator, "short") == []
    assert len(await list_fragments(emulator, "forever")) == 2


async def test_deleted_stream_leaves_nothing(start_emulator: StartEmulator) -> None:
    """A deleted stream's fragments stay gone for a same-named stream, also after a restart."""
    emulator = await start_emulator()
    kvs = client("kinesisvideo", emulator.url)
    await asyncio.to_thread(kvs.create_stream, StreamName="re")
    t0 = int(time.time() * 1000) - 60_000
    assert len((await put_media(emulator.url, "re", writer_chunks(t0, sine(1.0)))).of(
        "PERSISTED")) == 1  # fmt: skip
    arn = (await asyncio.to_thread(kvs.describe_stream, StreamName="re"))["StreamInfo"]["StreamARN"]
    await asyncio.to_thread(kvs.delete_stream, StreamARN=arn)
    await asyncio.to_thread(kvs.create_stream, StreamName="re")
    assert await list_fragments(emulator, "re") == []
    await emulator.stop()
    again = await start_emulator()
    assert await list_fragments(again, "re") == []
