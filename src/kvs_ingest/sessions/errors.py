"""Errors a speaker's socket can get from its session; `close_code` is what the server answers."""

from __future__ import annotations


class SessionError(Exception):
    close_code = 1011


class BufferFull(SessionError):
    """The session's ledger stayed full (KVS unreachable) past the wait bound."""

    close_code = 4503


class KvsUnavailable(SessionError):
    """The session's stream could not be ensured (control plane down, stream not ACTIVE)."""

    close_code = 4503


class SessionClosed(SessionError):
    """The session is shutting down and takes no more audio."""

    close_code = 1012
