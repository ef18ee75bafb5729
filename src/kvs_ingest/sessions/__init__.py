"""Sessions: one per session id, shared by its sockets; the timeline and the KVS sink behind it."""

from __future__ import annotations

from kvs_ingest.sessions.errors import BufferFull, KvsUnavailable, SessionClosed, SessionError
from kvs_ingest.sessions.registry import SessionRegistry
from kvs_ingest.sessions.session import Session, Speaker

__all__ = [
    "BufferFull",
    "KvsUnavailable",
    "Session",
    "SessionClosed",
    "SessionError",
    "SessionRegistry",
    "Speaker",
]
