"""A WebSocket client with no library behind it, for tests of what libraries never send:
masked frames built by hand and an opening handshake on a plain socket."""

from __future__ import annotations

import asyncio
import base64
import os
import socket


def frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (RFC 6455 §5.2)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def connect_raw(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A non-blocking TCP socket to the service on loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def handshake(
    sock: socket.socket, port: int, session: str, *, token: str | None, within: float
) -> None:
    """The opening handshake of a speaker socket; asserts the 101."""
    key = base64.b64encode(os.urandom(16)).decode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"GET /v1/sessions/{session}/speaker?format=webm HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 1), within)
    assert head.startswith(b"HTTP/1.1 101"), head
