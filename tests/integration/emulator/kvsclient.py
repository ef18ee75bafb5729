"""Test-side KVS data-plane client: a real chunked, SigV4-signed PutMedia POST (botocore's
SigV4Auth with the empty-payload hash, as the KVS producers sign it) and an ack stream parser.

Deliberately independent of the emulator's code and of our production sink (kvs/).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

FACTOR = float(os.environ.get("KVS_TEST_TIMEOUT_FACTOR", "1"))
REGION = "us-east-1"


def scaled(seconds: float) -> float:
    return seconds * FACTOR


def client(service: str, url: str, *, key: str = "test", secret: str = "test") -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        # one attempt: a test must see the emulator's answer, not botocore's retries of it
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=60),
    )


def data_client(service: str, control_url: str, stream: str, api: str, **kw: str) -> Any:
    endpoint = client("kinesisvideo", control_url, **kw).get_data_endpoint(
        StreamName=stream, APIName=api
    )["DataEndpoint"]
    return client(service, endpoint, **kw)


def signed_putmedia_headers(
    endpoint: str,
    stream: str,
    *,
    key: str = "test",
    secret: str = "test",
    start: float | None = None,
    timecode_type: str = "ABSOLUTE",
) -> dict[str, str]:
    start = time.time() if start is None else start
    request = AWSRequest(
        method="POST",
        url=endpoint.rstrip("/") + "/putMedia",
        headers={
            "x-amzn-stream-name": stream,
            "x-amzn-fragment-timecode-type": timecode_type,
            "x-amzn-producer-start-timestamp": f"{start:.3f}",
            "x-amzn-fragment-acknowledgment-required": "1",
            "Transfer-Encoding": "chunked",
        },
    )
    SigV4Auth(Credentials(key, secret), "kinesisvideo", REGION).add_auth(request)
    headers = dict(request.headers.items())
    del headers["Transfer-Encoding"]  # aiohttp adds exactly this header itself (chunked=True)
    return headers


class AckParser:
    """Concatenated JSON objects, split anywhere, maybe separated by whitespace."""

    def __init__(self) -> None:
        self._buf = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data.decode()
        out = []
        while True:
            self._buf = self._buf.lstrip()
            if not self._buf:
                return out
            try:
                obj, end = self._decoder.raw_decode(self._buf)
            except ValueError:
                return out
            out.append(obj)
            self._buf = self._buf[end:]


@dataclass
class PutResult:
    status: int
    error_type: str | None = None
    acks: list[dict[str, Any]] = field(default_factory=list)
    ended: str = ""  # "eof" (response ended cleanly) or "dropped"

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [a for a in self.acks if a.get("EventType") == event_type]


async def put_media(
    endpoint: str,
    stream: str,
    chunks: Iterable[bytes],
    *,
    key: str = "test",
    secret: str = "test",
    chunk_delay: float = 0.0,
    hold_open: asyncio.Event | None = None,
    stop_after_acks: int | None = None,
    headers: dict[str, str] | None = None,
    opened: asyncio.Event | None = None,
    on_ack: Callable[[dict[str, Any]], None] | None = None,
    total_seconds: float = 30.0,
) -> PutResult:
    """POST `chunks` as one chunked PutMedia body, reading acks while it is sent.

    `hold_open`: keep the body open (after the chunks) until the event is set; `opened` is set
    once the response's status and headers have arrived.
    """
    sent_all = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
            if chunk_delay:
                await asyncio.sleep(chunk_delay)
        sent_all.set()
        if hold_open is not None:
            await hold_open.wait()

    hdrs = headers or signed_putmedia_headers(endpoint, stream, key=key, secret=secret)
    parser = AckParser()
    result = PutResult(status=0)
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=scaled(total_seconds))
    ) as s:
        try:
            async with s.post(
                endpoint.rstrip("/") + "/putMedia", data=body(), headers=hdrs, chunked=True
            ) as response:
                result.status = response.status
                if opened is not None:
                    opened.set()
                error = response.headers.get("x-amzn-ErrorType")
                result.error_type = error.split(":")[0] if error else None
                if response.status != 200:
                    result.acks = [await response.json(content_type=None)]
                    return result
                async for data in response.content.iter_any():
                    for ack in parser.feed(data):
                        result.acks.append(ack)
                        if on_ack is not None:
                            on_ack(ack)
                    if hold_open is not None and stop_after_acks is not None:
                        if len(result.acks) >= stop_after_acks:
                            hold_open.set()
                result.ended = "eof"
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError):  # fmt: skip
            result.ended = "dropped"
    return result


async def eventually(predicate: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Wait for a condition no event announces (a request reaching the server)."""
    deadline = time.monotonic() + scaled(seconds)
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def stored(emulator: Any, stream: str, count: int, seconds: float = 10.0) -> None:
    """Wait until `stream` holds `count` fragments, woken by the store's change event."""
    rec = emulator.store.streams[stream]
    async with asyncio.timeout(scaled(seconds)):
        while len(rec.fragments) < count:
            await rec.changed.wait()
