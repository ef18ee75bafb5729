"""HTTP answers given on the service port through the WebSocket server's request hook.

Probes, metrics and the demo page are tiny; building them as `websockets` `Response` objects
keeps one port, one server and one event loop (DESIGN.md §4.3).
"""

from __future__ import annotations

import email.utils
import http
import json
import mimetypes
import re
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

STATIC_DIR = Path(__file__).parent / "static"
_STATIC_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def response(
    status: int, body: bytes | str, content_type: str, *, extra: dict[str, str] | None = None
) -> Response:
    data = body.encode() if isinstance(body, str) else body
    status_ = http.HTTPStatus(status)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(data))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-store"),
        ]
    )
    for key, value in (extra or {}).items():
        headers[key] = value
    return Response(status_.value, status_.phrase, headers, data)


def json_response(status: int, obj: object, *, extra: dict[str, str] | None = None) -> Response:
    return response(status, json.dumps(obj), "application/json", extra=extra)


def text_response(status: int, text: str, *, extra: dict[str, str] | None = None) -> Response:
    return response(status, text, "text/plain; charset=utf-8", extra=extra)


def load_static(directory: Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """Every file of the demo page folder, read once at start (no file I/O on the loop later)."""
    files: dict[str, tuple[bytes, str]] = {}
    if not directory.is_dir():
        return files
    for path in sorted(directory.iterdir()):
        if path.is_file() and _STATIC_NAME.fullmatch(path.name):
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype.startswith("text/") or ctype in ("application/javascript", "text/javascript"):
                ctype += "; charset=utf-8"
            files[path.name] = (path.read_bytes(), ctype)
    return files


def static_response(files: dict[str, tuple[bytes, str]], path: str) -> Response | None:
    """The demo page file for `/` or `/static/<name>` (or `/<name>`), or None if there is none."""
    if path in ("/", "/index.html"):
        name = "index.html"
    elif path.startswith("/static/"):
        name = path.removeprefix("/static/")
    else:
        name = path.removeprefix("/")
    if not _STATIC_NAME.fullmatch(name) or name not in files:
        return None
    body, ctype = files[name]
    return response(200, body, ctype)
