"""Incremental EBML reader: feed byte pieces of any size, get element events as soon as each is
complete.

Masters are reported as `MasterStart`/`MasterEnd` around their children, so a caller can act on a
Cluster's blocks before the Cluster ends (live streams write Segment and Cluster with unknown
size). Leaves are delivered whole, up to `max_element_size`. An unknown-size master ends where an
element starts that cannot be its child (RFC 8794 §6.2), at a new EBML header, or at `close()`.

The reader never waits for more data: it returns what it has and keeps the incomplete tail.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kvs_ingest.mkv.errors import MkvError
from kvs_ingest.mkv.ids import GLOBAL_IDS, MASTERS, PARENTS

DEFAULT_MAX_ELEMENT_SIZE = 16 * 1024 * 1024
_MAX_DEPTH = 16


@dataclass(frozen=True, slots=True)
class MasterStart:
    id: int
    offset: int  # stream offset of the element's first id byte
    size: int | None  # payload size; None when written as unknown
    header_size: int


@dataclass(frozen=True, slots=True)
class MasterEnd:
    id: int
    offset: int  # stream offset just past the element


@dataclass(frozen=True, slots=True)
class Leaf:
    id: int
    offset: int
    data: bytes


Event = MasterStart | MasterEnd | Leaf


@dataclass(slots=True)
class _Open:
    id: int
    end: int | None  # stream offset where a known-size master ends


def _vint_length(first: int) -> int:
    if first == 0:
        return 9  # invalid: longer than 8 bytes
    return 9 - first.bit_length()


class EbmlReader:
    """Feed bytes with `feed`, end the input with `close`. Unusable after it raised `MkvError`."""

    def __init__(self, *, max_element_size: int = DEFAULT_MAX_ELEMENT_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0  # index into _buf of the first unparsed byte
        self._base = 0  # stream offset of _buf[0]
        self._open: list[_Open] = []
        self._max = max_element_size
        self._failed = False

    @property
    def offset(self) -> int:
        """Stream offset of the first byte not yet turned into an event."""
        return self._base + self._pos

    @property
    def path(self) -> tuple[int, ...]:
        return tuple(o.id for o in self._open)

    @property
    def depth(self) -> int:
        return len(self._open)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet delivered (the incomplete tail)."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[Event]:
        if self._failed:
            raise MkvError("reader already failed")
        self._buf += data
        events: list[Event] = []
        try:
            self._parse(events)
        except MkvError:
            self._failed = True
            raise
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0
        return events

    def close(self) -> list[Event]:
        """End of input: close unknown-size masters; raise if an element was cut off."""
        if self._failed:
            raise MkvError("reader already failed")
        events: list[Event] = []
        self._end_known(events)
        if self.buffered:
            self._failed = True
            raise MkvError(f"stream ends inside an element at offset {self.offset}")
        while self._open:
            top = self._open.pop()
            if top.end is not None:
                self._failed = True
                raise MkvError(f"stream ends inside element 0x{top.id:X} (known size)")
            events.append(MasterEnd(top.id, self.offset))
        return events

    def _end_known(self, events: list[Event]) -> None:
        here = self.offset
        while self._open and self._open[-1].end is not None:
            end = self._open[-1].end
            assert end is not None
            if end > here:
                return
            if end < here:
                raise MkvError(f"child overruns its parent 0x{self._open[-1].id:X} at {here}")
            events.append(MasterEnd(self._open.pop().id, here))

    def _parse(self, events: list[Event]) -> None:
        buf = self._buf
        while True:
            self._end_known(events)
            pos = self._pos
            avail = len(buf) - pos
            if avail < 2:
                return
            id_len = _vint_length(buf[pos])
            if id_len > 4:
                raise MkvError(f"invalid element id at offset {self.offset}")
            if avail < id_len + 1:
                return
            size_len = _vint_length(buf[pos + id_len])
            if size_len > 8:
                raise MkvError(f"invalid element size at offset {self.offset}")
            header = id_len + size_len
            if avail < header:
                return
            element_id = int.from_bytes(buf[pos : pos + id_len], "big")
            raw = int.from_bytes(buf[pos + id_len : pos + header], "big")
            raw &= (1 << (7 * size_len)) - 1
            size: int | None = None if raw == (1 << (7 * size_len)) - 1 else raw
            self._close_unknown_before(element_id, events)
            offset = self.offset
            if element_id in MASTERS:
                if len(self._open) >= _MAX_DEPTH:
                    raise MkvError("elements nested too deep")
                parent_end = self._enclosing_end()
                end = None if size is None else offset + header + size
                if end is not None and parent_end is not None and end > parent_end:
                    raise MkvError(f"element 0x{element_id:X} overruns its parent at {offset}")
                self._pos = pos + header
                self._open.append(_Open(element_id, end))
                events.append(MasterStart(element_id, offset, size, header))
                continue
            if size is None:
                raise MkvError(f"leaf element 0x{element_id:X} with unknown size at {offset}")
            if size > self._max:
                raise MkvError(
                    f"element 0x{element_id:X} of {size} bytes exceeds the limit of {self._max}"
                )
            parent_end = self._enclosing_end()
            if parent_end is not None and offset + header + size > parent_end:
                raise MkvError(f"element 0x{element_id:X} overruns its parent at {offset}")
            if avail < header + size:
                return
            start = pos + header
            self._pos = start + size
            events.append(Leaf(element_id, offset, bytes(buf[start : start + size])))

    def _enclosing_end(self) -> int | None:
        for item in reversed(self._open):
            if item.end is not None:
                return item.end
        return None

    def _close_unknown_before(self, element_id: int, events: list[Event]) -> None:
        """End open unknown-size masters that `element_id` cannot belong to."""
        if element_id in GLOBAL_IDS:
            return
        parents = PARENTS.get(element_id)
        if parents is None:
            return  # an element we do not know: treat it as a child of whatever is open
        while self._open and self._open[-1].end is None and self._open[-1].id not in parents:
            events.append(MasterEnd(self._open.pop().id, self.offset))


# --- leaf value decoding -------------------------------------------------------------------


def read_uint(data: bytes) -> int:
    return int.from_bytes(data, "big") if data else 0


def read_sint(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True) if data else 0


def read_float(data: bytes) -> float:
    if len(data) == 4:
        return float(struct.unpack(">f", data)[0])
    if len(data) == 8:
        return float(struct.unpack(">d", data)[0])
    if not data:
        return 0.0
    raise MkvError(f"float element of {len(data)} bytes")


def read_string(data: bytes) -> str:
    return data.split(b"\x00", 1)[0].decode("utf-8", errors="replace")


# --- blocks ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    track: int
    timecode: int  # relative to the Cluster's Timecode
    flags: int
    frames: list[bytes]

    @property
    def keyframe(self) -> bool:
        return bool(self.flags & 0x80)


def _read_vint(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise MkvError("block ends inside a vint")
    length = _vint_length(data[pos])
    if length > 8 or pos + length > len(data):
        raise MkvError("invalid vint in block")
    value = int.from_bytes(data[pos : pos + length], "big") & ((1 << (7 * length)) - 1)
    return value, pos + length


def parse_block(data: bytes) -> Block:
    """A SimpleBlock's or Block's payload: track, relative timecode, flags and frames (laced or
    not; Matroska §10.3)."""
    track, pos = _read_vint(data, 0)
    if pos + 3 > len(data):
        raise MkvError("block shorter than its header")
    timecode, flags = struct.unpack_from(">hB", data, pos)
    pos += 3
    lacing = (flags >> 1) & 0x03
    if lacing == 0:
        return Block(track, timecode, flags, [data[pos:]])
    if pos >= len(data):
        raise MkvError("laced block without a frame count")
    count = data[pos] + 1
    pos += 1
    sizes: list[int] = []
    if lacing == 1:  # Xiph
        for _ in range(count - 1):
            size = 0
            while True:
                if pos >= len(data):
                    raise MkvError("truncated Xiph lacing")
                byte = data[pos]
                pos += 1
                size += byte
                if byte != 255:
                    break
            sizes.append(size)
    elif lacing == 3:  # EBML
        first, pos = _read_vint(data, pos)
        sizes.append(first)
        for _ in range(count - 2):
            raw, new_pos = _read_vint(data, pos)
            length = new_pos - pos
            delta = raw - ((1 << (7 * length - 1)) - 1)
            pos = new_pos
            sizes.append(sizes[-1] + delta)
    else:  # fixed
        rest = len(data) - pos
        if rest % count:
            raise MkvError("fixed lacing with a remainder")
        sizes = [rest // count] * (count - 1)
    if any(s < 0 for s in sizes) or sum(sizes) > len(data) - pos:
        raise MkvError("lace sizes exceed the block")
    sizes.append(len(data) - pos - sum(sizes))
    frames = []
    for size in sizes:
        frames.append(data[pos : pos + size])
        pos += size
    return Block(track, timecode, flags, frames)
