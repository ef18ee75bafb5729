"""Sans-I/O EBML/Matroska: a writer of the elements KVS needs and an incremental reader."""

from __future__ import annotations

from kvs_ingest.mkv.errors import MkvError
from kvs_ingest.mkv.ids import ID
from kvs_ingest.mkv.reader import (
    Block,
    EbmlReader,
    Event,
    Leaf,
    MasterEnd,
    MasterStart,
    parse_block,
    read_float,
    read_sint,
    read_string,
    read_uint,
)

__all__ = [
    "ID",
    "Block",
    "EbmlReader",
    "Event",
    "Leaf",
    "MasterEnd",
    "MasterStart",
    "MkvError",
    "parse_block",
    "read_float",
    "read_sint",
    "read_string",
    "read_uint",
]
