"""Errors of the KVS sink. Each says whether trying again later can help."""

from __future__ import annotations


class KvsError(Exception):
    """Something KVS refused or could not do."""

    retryable: bool = True


class ControlPlaneError(KvsError):
    """A control-plane call failed after its retries (or with an error retries cannot fix)."""

    def __init__(self, api: str, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{api}: {code}: {message}")
        self.api = api
        self.code = code
        self.retryable = retryable


class StreamNotActive(KvsError):
    """The stream did not become ACTIVE within the bound (or is being deleted)."""


class PutMediaRefused(KvsError):
    """PutMedia answered with an HTTP error before any ack (PutMedia API reference)."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(f"PutMedia refused: HTTP {status} {error_type}: {message[:200]}")
        self.status = status
        self.error_type = error_type


class PutMediaDropped(KvsError):
    """The PutMedia connection broke (reset, closed early, unreadable acks)."""
