"""An HTTP answer for requests that websockets' handshake parser gives up on.

websockets reads only a request line and headers: a request that announces a body
(`Content-Length` other than 0, or `Transfer-Encoding`) fails in `Request.parse`, and its
`ServerProtocol` then just closes the TCP connection. A client that POSTs to the speaker path
deserves a status and a reason, so `AnsweringConnection` swaps in a protocol that sends
400 before that close. Everything else is websockets' own behaviour, untouched.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidMessage
from websockets.server import ServerProtocol

BODY_REFUSED = (
    "kvs-ingest takes no HTTP request bodies: the speaker endpoint is a WebSocket "
    "(GET with Upgrade: websocket), the probes are GET\n"
)


def _refused_for_body(exc: BaseException | None) -> bool:
    """True when the handshake failed because the request carried (or announced) a body."""
    if not isinstance(exc, InvalidMessage):
        return False
    cause = exc.__cause__
    return isinstance(cause, NotImplementedError) or (
        isinstance(cause, ValueError) and "request body" in str(cause)
    )


class _AnsweringProtocol(ServerProtocol):
    """`ServerProtocol` that answers 400 where it would close without a word."""

    _answered = False

    def send_eof(self) -> None:
        if not self._answered and _refused_for_body(self.handshake_exc):
            self._answered = True
            # send_response writes the answer and calls send_eof itself (the branch below).
            self.send_response(self.reject(HTTPStatus.BAD_REQUEST, BODY_REFUSED))
            return
        super().send_eof()


class AnsweringConnection(ServerConnection):
    """`ServerConnection` whose protocol answers requests with a body (pass as
    `serve(create_connection=...)`).

    websockets builds the sans-I/O protocol itself, so the subclass is applied here, before any
    byte has been read; both classes share one layout.
    """

    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        protocol.__class__ = _AnsweringProtocol
        super().__init__(protocol, *args, **kwargs)
