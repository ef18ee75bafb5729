"""The speaker protocol's close codes (DESIGN.md §4.4) and the one function that maps errors to them.

Every way a speaker socket can end goes through `close_for`, so the table in DESIGN.md and the
codes clients see cannot drift apart. Exception text never reaches a client: each code has a
fixed public message, and a `PeerError` may add a short hint written for the client.
"""

from __future__ import annotations

from enum import IntEnum

from kvs_ingest.logging import get_logger

log = get_logger(__name__)


class CloseCode(IntEnum):
    """Close codes of speaker protocol v1 (RFC 6455 §7.4 plus the 4xxx private range)."""

    NORMAL = 1000  # `stop` done, everything persisted
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # draining
    TRY_AGAIN_LATER = 1013  # at capacity
    BAD_MESSAGE = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    TIMEOUT = 4408
    REPLACED = 4409
    UNSUPPORTED_MEDIA = 4415
    TOO_FAST = 4429
    KVS_UNAVAILABLE = 4503


# The message each code sends when the error carries no hint of its own.
PUBLIC_MESSAGES: dict[CloseCode, str] = {
    CloseCode.NORMAL: "stopped; everything is persisted",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.INTERNAL_ERROR: "internal server error; reconnect with backoff",
    CloseCode.SERVICE_RESTART: "server draining; reconnect now, the session continues",
    CloseCode.TRY_AGAIN_LATER: "server at capacity; reconnect with backoff",
    CloseCode.BAD_MESSAGE: "malformed message or protocol violation",
    CloseCode.UNAUTHORIZED: "token missing, invalid or expired",
    CloseCode.FORBIDDEN: "not allowed",
    CloseCode.TIMEOUT: "timed out waiting for media",
    CloseCode.REPLACED: "replaced by a newer socket of the same session",
    CloseCode.UNSUPPORTED_MEDIA: "media unsupported or undecodable",
    CloseCode.TOO_FAST: "too fast; send audio in real time",
    CloseCode.KVS_UNAVAILABLE: "storage unavailable and the session's buffer is full",
}


class PeerError(Exception):
    """The client (or its situation) ends the socket: carries the code and a client-safe hint.

    `reason` is a short machine label for metrics and logs (e.g. ``expired``); `hint` is shown
    to the client and must never hold anything secret or internal.
    """

    code: CloseCode = CloseCode.BAD_MESSAGE

    def __init__(self, hint: str | None = None, *, reason: str = "", code: CloseCode | None = None):
        if code is not None:
            self.code = code
        self.hint = hint or PUBLIC_MESSAGES[self.code]
        self.reason = reason or self.code.name.lower()
        super().__init__(self.hint)


class ProtocolViolation(PeerError):
    code = CloseCode.BAD_MESSAGE


class MessageTooBig(PeerError):
    code = CloseCode.MESSAGE_TOO_BIG


class Unauthorized(PeerError):
    code = CloseCode.UNAUTHORIZED


class Forbidden(PeerError):
    code = CloseCode.FORBIDDEN


class TimedOut(PeerError):
    code = CloseCode.TIMEOUT


class TooFast(PeerError):
    code = CloseCode.TOO_FAST


class AtCapacity(PeerError):
    code = CloseCode.TRY_AGAIN_LATER


class Draining(PeerError):
    code = CloseCode.SERVICE_RESTART


class Replaced(PeerError):
    code = CloseCode.REPLACED


class UnsupportedMedia(PeerError):
    code = CloseCode.UNSUPPORTED_MEDIA


class StorageUnavailable(PeerError):
    code = CloseCode.KVS_UNAVAILABLE


def close_for(exc: BaseException) -> tuple[CloseCode, str]:
    """The close code and client-safe message for any error that ends a speaker socket.

    The one place errors become close codes (DESIGN.md §4.4). Errors of the packages below
    (`media`, `sessions`) are recognised by name and by their `close_code` attribute, so this
    module does not import them.
    """
    if isinstance(exc, PeerError):
        return exc.code, exc.hint
    name = type(exc).__name__
    if name == "MediaError":
        return CloseCode.UNSUPPORTED_MEDIA, PUBLIC_MESSAGES[CloseCode.UNSUPPORTED_MEDIA]
    if name == "BufferFull":
        return CloseCode.KVS_UNAVAILABLE, PUBLIC_MESSAGES[CloseCode.KVS_UNAVAILABLE]
    if name == "KvsUnavailable":
        return CloseCode.KVS_UNAVAILABLE, "storage unavailable; reconnect with backoff"
    code = getattr(exc, "close_code", None)
    if isinstance(code, int) and code in CloseCode._value2member_map_:
        close = CloseCode(code)
        return close, PUBLIC_MESSAGES[close]
    return CloseCode.INTERNAL_ERROR, PUBLIC_MESSAGES[CloseCode.INTERNAL_ERROR]
