"""Streams and fragments on disk: what survives an emulator restart.

Layout under the data directory:
    streams/<name>/stream.json             the stream (DescribeStream fields, tags, retention)
    streams/<name>/fragments/<number>.mkv  one fragment as a standalone MKV (EBML header,
                                           Segment, Info, Tracks, producer Tags, Cluster)
    streams/<name>/fragments/<number>.json its metadata; written last, so a fragment exists
                                           only once both files are complete
Every file is written to a temporary name, fsynced and renamed (then the directory fsynced), so
PERSISTED is only acked for what a crash cannot take back. Blocking file work runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvs_ingest.emulator.ingest import FragmentComplete
from kvs_ingest.logging import get_logger
from kvs_ingest.mkv.writer import ebml_header, segment_header, tags

log = get_logger(__name__)

# Fragment numbers: long decimal strings, one length, increasing with ingestion order (like
# KVS's "91343852333181432392682062600000000000001000003").
_NUMBER_PREFIX = "91343852333181432"
_NUMBER_DIGITS = 30


def format_number(value: int) -> str:
    return f"{_NUMBER_PREFIX}{value:0{_NUMBER_DIGITS}d}"


def parse_number(number: str) -> int | None:
    if len(number) != len(_NUMBER_PREFIX) + _NUMBER_DIGITS or not number.isdigit():
        return None
    if not number.startswith(_NUMBER_PREFIX):
        return None
    return int(number[len(_NUMBER_PREFIX) :])


@dataclass(frozen=True, slots=True)
class FragmentMeta:
    number: str
    timecode: int  # the Cluster Timecode the acks reported, ms
    producer_ms: int  # absolute producer timestamp of the earliest frame, ms since the epoch
    last_ms: int  # absolute producer timestamp of the latest frame
    server_ms: int  # when the emulator started receiving it
    duration_ms: int
    size: int  # bytes of the stored Cluster (FragmentSizeInBytes)
    cluster_offset: int  # where the Cluster starts in the stored file
    tags: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FragmentMeta:
        data = dict(data)
        data["tags"] = tuple(tuple(t) for t in data.get("tags", ()))
        return cls(**data)


@dataclass(slots=True)
class StreamRecord:
    name: str
    arn: str
    device_name: str | None
    media_type: str | None
    kms_key_id: str
    version: str
    creation_time: float
    active_at: float
    retention_hours: int
    tags: dict[str, str] = field(default_factory=dict)
    fragments: list[FragmentMeta] = field(default_factory=list)
    deleted: bool = False
    # Set (and replaced) whenever a fragment is stored: GetMedia waits on it.
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def status(self, now: float) -> str:
        return "ACTIVE" if now >= self.active_at else "CREATING"

    @property
    def last_ms(self) -> int | None:
        return max((f.last_ms for f in self.fragments), default=None)

    def info(self, now: float) -> dict[str, Any]:
        info: dict[str, Any] = {
            "StreamName": self.name,
            "StreamARN": self.arn,
            "KmsKeyId": self.kms_key_id,
            "Version": self.version,
            "Status": self.status(now),
            "CreationTime": self.creation_time,
            "DataRetentionInHours": self.retention_hours,
        }
        if self.device_name is not None:
            info["DeviceName"] = self.device_name
        if self.media_type is not None:
            info["MediaType"] = self.media_type
        return info

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arn": self.arn,
            "device_name": self.device_name,
            "media_type": self.media_type,
            "kms_key_id": self.kms_key_id,
            "version": self.version,
            "creation_time": self.creation_time,
            "active_at": self.active_at,
            "retention_hours": self.retention_hours,
            "tags": self.tags,
        }

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


def new_version() -> str:
    return secrets.token_hex(10)


class Store:
    """The streams of one data directory. Call `load()` once before use."""

    def __init__(self, data_dir: Path, *, retention_hour_seconds: float = 3600.0) -> None:
        self.root = Path(data_dir)
        self._streams_dir = self.root / "streams"
        self._trash = self.root / "trash"
        self.streams: dict[str, StreamRecord] = {}
        self._last_number = 0
        self._hour = retention_hour_seconds

    # --- start ---------------------------------------------------------------------------

    async def load(self) -> None:
        records = await asyncio.to_thread(self._load_sync)
        self.streams = {r.name: r for r in records}
        for rec in records:
            for meta in rec.fragments:
                self._last_number = max(self._last_number, parse_number(meta.number) or 0)

    def _load_sync(self) -> list[StreamRecord]:
        self._streams_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._trash, ignore_errors=True)
        records = []
        for stream_dir in sorted(self._streams_dir.iterdir()):
            try:
                data = json.loads((stream_dir / "stream.json").read_text())
            except (OSError, ValueError):
                continue
            rec = StreamRecord(**data)
            frag_dir = stream_dir / "fragments"
            metas = []
            for path in frag_dir.glob("*.json") if frag_dir.is_dir() else []:
                try:
                    meta = FragmentMeta.from_json(json.loads(path.read_text()))
                except (OSError, ValueError, TypeError):
                    continue
                if path.with_suffix(".mkv").is_file():
                    metas.append(meta)
            rec.fragments = sorted(metas, key=lambda m: m.number)
            records.append(rec)
        return records

    # --- streams -------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        return self._streams_dir / name

    async def save_stream(self, rec: StreamRecord) -> None:
        await asyncio.to_thread(
            _write_atomic, self._dir(rec.name) / "stream.json", json.dumps(rec.to_json()).encode()
        )

    async def add_stream(self, rec: StreamRecord) -> None:
        self.streams[rec.name] = rec
        await asyncio.to_thread(self._delete_sync, rec.name)  # leftovers of an older stream
        await self.save_stream(rec)

    async def delete_stream(self, rec: StreamRecord) -> None:
        rec.deleted = True
        rec.notify()
        self.streams.pop(rec.name, None)
        await asyncio.to_thread(self._delete_sync, rec.name)

    def _delete_sync(self, name: str) -> None:
        self._trash.mkdir(parents=True, exist_ok=True)
        target = self._trash / f"{name}.{time.time_ns()}"
        try:
            os.replace(self._dir(name), target)
        except FileNotFoundError:
            return
        shutil.rmtree(target, ignore_errors=True)

    # --- fragments -----------------------------------------------------------------------

    def allocate_number(self) -> str:
        """The next fragment number: increasing across streams and restarts."""
        self._last_number = max(self._last_number + 1, time.time_ns() // 1000 * 1000)
        return format_number(self._last_number)

    async def persist(
        self,
        rec: StreamRecord,
        fragment: FragmentComplete,
        *,
        number: str,
        producer_ms: int,
        server_ms: int,
    ) -> FragmentMeta:
        head = b"".join(
            [ebml_header(), segment_header(), fragment.header]
            + [tags([item]) for item in fragment.tags]
        )
        meta = FragmentMeta(
            number=number,
            timecode=fragment.timecode,
            producer_ms=producer_ms,
            last_ms=producer_ms + (fragment.last_ms - fragment.first_ms),
            server_ms=server_ms,
            duration_ms=fragment.duration_ms,
            size=len(fragment.cluster),
            cluster_offset=len(head),
            tags=fragment.tags,
        )
        frag_dir = self._dir(rec.name) / "fragments"
        await asyncio.to_thread(self._persist_sync, frag_dir, number, head + fragment.cluster, meta)
        if rec.deleted:
            raise FileNotFoundError(rec.name)
        rec.fragments.append(meta)
        rec.notify()
        return meta

    @staticmethod
    def _persist_sync(frag_dir: Path, number: str, body: bytes, meta: FragmentMeta) -> None:
        if not (frag_dir.parent / "stream.json").is_file():
            raise FileNotFoundError(frag_dir.parent)  # deleted meanwhile: do not resurrect it
        frag_dir.mkdir(exist_ok=True)
        _write_atomic(frag_dir / f"{number}.mkv", body, sync_dir=False)
        _write_atomic(frag_dir / f"{number}.json", json.dumps(asdict(meta)).encode())

    async def read(self, rec: StreamRecord, meta: FragmentMeta) -> bytes:
        path = self._dir(rec.name) / "fragments" / f"{meta.number}.mkv"
        return await asyncio.to_thread(path.read_bytes)

    def visible(self, rec: StreamRecord, now: float) -> list[FragmentMeta]:
        """The fragments retention still keeps (0 hours: all of them)."""
        if rec.retention_hours <= 0:
            return rec.fragments
        horizon = (now - rec.retention_hours * self._hour) * 1000
        return [f for f in rec.fragments if f.server_ms >= horizon]

    async def sweep(self, now: float) -> int:
        """Delete fragments past their stream's retention; returns how many."""
        removed = 0
        for rec in list(self.streams.values()):
            keep = self.visible(rec, now)
            if len(keep) == len(rec.fragments):
                continue
            gone = [f for f in rec.fragments if f not in keep]
            rec.fragments = list(keep)
            frag_dir = self._dir(rec.name) / "fragments"
            await asyncio.to_thread(_unlink_fragments, frag_dir, [f.number for f in gone])
            removed += len(gone)
        return removed


def _unlink_fragments(frag_dir: Path, numbers: list[str]) -> None:
    for number in numbers:
        for suffix in (".json", ".mkv"):  # metadata first: a half-deleted fragment is invisible
            (frag_dir / f"{number}{suffix}").unlink(missing_ok=True)


def _write_atomic(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def kvs_tags_before(meta: FragmentMeta) -> bytes:
    """KVS's own per-fragment tags, sent before the Cluster (GetMedia, real output shape)."""
    return tags(
        [
            ("AWS_KINESISVIDEO_FRAGMENT_NUMBER", meta.number),
            ("AWS_KINESISVIDEO_SERVER_TIMESTAMP", _seconds(meta.server_ms)),
            ("AWS_KINESISVIDEO_PRODUCER_TIMESTAMP", _seconds(meta.producer_ms)),
        ]
    )


def kvs_tags_after(meta: FragmentMeta, now_ms: int) -> bytes:
    return tags(
        [
            ("AWS_KINESISVIDEO_MILLIS_BEHIND_NOW", str(max(0, now_ms - meta.server_ms))),
            ("AWS_KINESISVIDEO_CONTINUATION_TOKEN", meta.number),
        ]
    )


def _seconds(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def render(stored: bytes, meta: FragmentMeta, now_ms: int) -> bytes:
    """One fragment as GetMedia returns it: a complete MKV with KVS's tags around the Cluster."""
    cut = meta.cluster_offset
    return b"".join(
        (stored[:cut], kvs_tags_before(meta), stored[cut:], kvs_tags_after(meta, now_ms))
    )
