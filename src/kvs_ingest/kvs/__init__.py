"""The KVS sink: control plane, PutMedia body and connection, acks, ledger, endpoint cache."""

from __future__ import annotations

from kvs_ingest.kvs.acks import AckError, AckEvent, AckEventType, AckParser
from kvs_ingest.kvs.errors import KvsError
from kvs_ingest.kvs.fragments import FragmentPiece, FragmentWriter, connection_header

__all__ = [
    "AckError",
    "AckEvent",
    "AckEventType",
    "AckParser",
    "FragmentPiece",
    "FragmentWriter",
    "KvsError",
    "connection_header",
]
