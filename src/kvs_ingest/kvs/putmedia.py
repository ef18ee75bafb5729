"""`PutMediaConnection`: one chunked, SigV4-signed PutMedia POST with aiohttp, full duplex.

The body is an async iterator the caller feeds (`kvs_ingest.kvs.uploader` pulls it from the
ledger); the acks streaming back on the same request go through `AckParser` to `on_ack` while
the body is still being sent. aiohttp returns the response once its headers arrive and keeps
writing the body from the iterator meanwhile (KVS-PROTOCOL.md, "Full duplex").
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp

from kvs_ingest.kvs.acks import AckError, AckEvent, AckParser
from kvs_ingest.kvs.control import FrozenCredentials
from kvs_ingest.kvs.errors import PutMediaDropped, PutMediaRefused
from kvs_ingest.kvs.limits import (
    HEADER_ACK_REQUIRED,
    HEADER_PRODUCER_START,
    HEADER_STREAM_NAME,
    HEADER_TIMECODE_TYPE,
)
from kvs_ingest.kvs.signing import sign_request

USER_AGENT = f"kvs-ingest/0.1 aiohttp/{aiohttp.__version__}"
_MAX_ERROR_BODY = 8192


def producer_timestamp(epoch_seconds: float) -> str:
    """`x-amzn-producer-start-timestamp`: seconds since the epoch with milliseconds."""
    return f"{epoch_seconds:.3f}"


def putmedia_headers(
    url: str,
    *,
    stream_name: str,
    start_timestamp: float,
    credentials: FrozenCredentials,
    region: str,
) -> dict[str, str]:
    """The signed request headers, without Transfer-Encoding (aiohttp writes that itself)."""
    unsigned = {
        HEADER_STREAM_NAME: stream_name,
        HEADER_TIMECODE_TYPE: "ABSOLUTE",
        HEADER_PRODUCER_START: producer_timestamp(start_timestamp),
        HEADER_ACK_REQUIRED: "1",
        "user-agent": USER_AGENT,
        "transfer-encoding": "chunked",
    }
    signed = sign_request(url, unsigned, credentials, region)
    return {k: v for k, v in signed.items() if k.lower() != "transfer-encoding"}


class PutMediaConnection:
    """One PutMedia request. `run` returns when the response ends; not reusable.

    Cancel the task running `run` to drop the connection at once (what a retryable ERROR ack
    or a stale connection needs); end the body iterator to close it cleanly.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        endpoint: str,
        stream_name: str,
        credentials: FrozenCredentials,
        region: str,
        start_timestamp: float,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = endpoint.rstrip("/") + "/putMedia"
        self._http = http
        self._headers = putmedia_headers(
            self.url,
            stream_name=stream_name,
            start_timestamp=start_timestamp,
            credentials=credentials,
            region=region,
        )
        self._connect_timeout = connect_timeout
        self.responded = False  # the 200 arrived: the connection was accepted
        self.aborted = False
        # The response ended (KVS closed the connection, e.g. after 4003): the body must stop
        # too, or aiohttp, which waits for the body before it lets the request go, never returns.
        self.ended = False
        self._resp: aiohttp.ClientResponse | None = None

    def abort(self) -> None:
        """Cut the connection now, without the final chunk: KVS must not take the fragment in
        progress as complete. `run` then raises PutMediaDropped; the body iterator should stop
        when it sees `aborted`."""
        self.aborted = True
        resp = self._resp
        if resp is not None and resp.connection is not None:
            transport = resp.connection.transport
            if transport is not None:
                transport.abort()
        if resp is not None:
            resp.close()

    async def run(
        self,
        body: AsyncIterator[bytes],
        on_ack: Callable[[AckEvent], None],
        on_end: Callable[[], None] | None = None,
    ) -> None:
        """Send `body` and deliver acks; raises PutMediaRefused or PutMediaDropped. When the
        response ends, `ended` is set and `on_end` called: the body should then end."""
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout, sock_connect=self._connect_timeout
        )
        try:
            async with self._http.post(
                self.url, data=body, headers=self._headers, timeout=timeout, chunked=True
            ) as resp:
                if resp.status != 200:
                    raw = await resp.content.read(_MAX_ERROR_BODY)
                    error_type = (
                        resp.headers.get("x-amzn-ErrorType")
                        or resp.headers.get("x-amz-ErrorType")
                        or ""
                    ).split(":")[0]
                    raise PutMediaRefused(resp.status, error_type, raw.decode("utf-8", "replace"))
                self.responded = True
                self._resp = resp
                if self.aborted:
                    self.abort()
                parser = AckParser()
                try:
                    async for chunk in resp.content.iter_any():
                        for event in parser.feed(chunk):
                            on_ack(event)
                finally:
                    self.ended = True
                    if on_end is not None:
                        on_end()
                parser.close()
        except AckError as exc:
            raise PutMediaDropped(f"unreadable ack stream: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PutMediaDropped(f"{type(exc).__name__}: {exc}") from exc
