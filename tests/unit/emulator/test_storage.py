"""Store: what survives a restart, and what a crash half-way through a write leaves out."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kvs_ingest.emulator.ingest import FragmentComplete, PutMediaParser
from kvs_ingest.emulator.storage import Store, StreamRecord, new_version, parse_number, render
from kvs_ingest.mkv import writer as w

PCM = b"\x01\x02" * 3200


def fragment(t: int) -> FragmentComplete:
    body = w.ebml_header() + w.segment_header() + w.info(b"x" * 16) + w.tracks()
    body += w.tags([("MimeType", "audio/L16")]) + w.cluster_header(t) + w.simple_block(1, 0, PCM)
    parser = PutMediaParser()
    events = parser.feed(body) + parser.close()
    return next(e for e in events if isinstance(e, FragmentComplete))


def record(name: str) -> StreamRecord:
    return StreamRecord(name, f"arn:x/{name}/1", None, None, "kms", new_version(), 1.0, 0.0, 0)


async def test_fragments_survive_reload_and_numbers_grow(tmp_path: Path) -> None:
    """Fragments survive a reload in order; new numbers exceed every stored one."""
    store = Store(tmp_path)
    await store.load()
    rec = record("s")
    await store.add_stream(rec)
    numbers = []
    for i in range(3):
        number = store.allocate_number()
        await store.persist(rec, fragment(1000 * i), number=number, producer_ms=1000 * i,
                            server_ms=5000 + i)  # fmt: skip
        numbers.append(number)
    again = Store(tmp_path)
    await again.load()
    assert [f.number for f in again.streams["s"].fragments] == numbers
    assert int(again.allocate_number()) > int(numbers[-1])
    assert parse_number(numbers[0]) is not None and len(numbers[0]) == 47


async def test_half_written_fragment_is_not_loaded(tmp_path: Path) -> None:
    """A fragment without its metadata file (crash before PERSISTED) is not loaded."""
    store = Store(tmp_path)
    await store.load()
    rec = record("c")
    await store.add_stream(rec)
    meta = await store.persist(rec, fragment(0), number=store.allocate_number(), producer_ms=0,
                               server_ms=1)  # fmt: skip
    frag_dir = tmp_path / "streams" / "c" / "fragments"
    (frag_dir / f"{meta.number}.json").unlink()
    (frag_dir / "junk.json.tmp").write_bytes(b"{")
    again = Store(tmp_path)
    await again.load()
    assert again.streams["c"].fragments == []


async def test_render_is_getmedia_shape(tmp_path: Path) -> None:
    """A stored fragment renders in GetMedia's order: producer Tags, KVS Tags, Cluster, Tags."""
    store = Store(tmp_path)
    await store.load()
    rec = record("r")
    await store.add_stream(rec)
    meta = await store.persist(rec, fragment(0), number=store.allocate_number(), producer_ms=0,
                               server_ms=1234)  # fmt: skip
    data = render(await store.read(rec, meta), meta, 2234)
    order = [data.find(m) for m in (b"MimeType", b"AWS_KINESISVIDEO_FRAGMENT_NUMBER",
                                    b"\x1f\x43\xb6\x75", b"AWS_KINESISVIDEO_MILLIS_BEHIND_NOW")]  # fmt: skip
    assert -1 not in order and order == sorted(order)
    assert b"1.234" in data and b"1000" in data  # server timestamp, millis behind now
    assert asyncio.get_running_loop()
