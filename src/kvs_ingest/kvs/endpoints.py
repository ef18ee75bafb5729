"""Data-endpoint cache: one GetDataEndpoint per stream and API, however many callers race.

AWS's guidance: caching the endpoint is safe if it is reloaded on failure; the producer SDK
refreshes it about every 45 minutes. `EndpointCache.get` is single-flight per key: concurrent
callers await the same look-up. `invalidate` is what a failed connection calls.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable

from kvs_ingest.kvs.metrics import ENDPOINT_CACHE

Fetch = Callable[[str, str], Awaitable[str]]


class EndpointCache:
    def __init__(
        self, fetch: Fetch, *, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, str], tuple[str, float]] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[str]] = {}

    async def get(self, stream: str, api: str = "PUT_MEDIA") -> str:
        key = (stream, api)
        cached = self._entries.get(key)
        if cached is not None and cached[1] > self._clock():
            ENDPOINT_CACHE.labels("hit").inc()
            return cached[0]
        future = self._inflight.get(key)
        if future is None:
            ENDPOINT_CACHE.labels("miss").inc()
            future = asyncio.ensure_future(self._load(key))
            self._inflight[key] = future
            future.add_done_callback(functools.partial(self._done, key))
        else:
            ENDPOINT_CACHE.labels("hit").inc()
        return await asyncio.shield(future)

    async def _load(self, key: tuple[str, str]) -> str:
        url = await self._fetch(*key)
        self._entries[key] = (url, self._clock() + self._ttl)
        return url

    def _done(self, key: tuple[str, str], future: asyncio.Future[str]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if not future.cancelled():
            future.exception()  # retrieved: callers see it through their own await

    def invalidate(self, stream: str, api: str = "PUT_MEDIA", url: str | None = None) -> None:
        """Forget the endpoint (only if it still is `url`, when given: a newer one stays)."""
        cached = self._entries.get((stream, api))
        if cached is not None and (url is None or cached[0] == url):
            del self._entries[(stream, api)]
