"""The KVS control plane with aiobotocore: streams, data endpoints, credentials.

`make_kvs(settings)` builds the `KvsControl` the session registry shares. Calls retry with
jittered back-off on throttling, 5xx and connection errors (botocore's own retries are off, so
the policy is ours and visible in metrics). Streams are ensured with DescribeStream, then
CreateStream when missing (a concurrent creator is fine), then polled until ACTIVE with a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from kvs_ingest.config import KvsBackend, Settings
from kvs_ingest.kvs.endpoints import EndpointCache
from kvs_ingest.kvs.errors import ControlPlaneError, StreamNotActive
from kvs_ingest.kvs.limits import STREAM_MEDIA_TYPE
from kvs_ingest.kvs.metrics import CONTROL_CALLS
from kvs_ingest.kvs.tuning import DEFAULT_TUNING, Tuning
from kvs_ingest.logging import get_logger
from kvs_ingest.pacing import TurnPacer

log = get_logger(__name__)

DEFAULT_REGION = "us-east-1"
_ARCHIVED_CLIENTS = 8  # archived-media clients (one per data endpoint) kept open
# The emulator's default keys: used for the embedded/endpoint backends when the AWS chain has none.
EMULATOR_ACCESS_KEY = "test"
EMULATOR_SECRET_KEY = "test"

_THROTTLING = frozenset(
    {
        "ClientLimitExceededException",
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "LimitExceededException",
        "RequestLimitExceeded",
    }
)


@dataclass(frozen=True, slots=True)
class FrozenCredentials:
    """Credentials for one PutMedia connection; `expires_at` is epoch seconds, if they expire."""

    access_key: str
    secret_key: str
    token: str | None
    expires_at: float | None

    def __repr__(self) -> str:  # never the secret
        return f"FrozenCredentials(access_key={self.access_key[:4]}…, expires_at={self.expires_at})"


def _error_code(exc: ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(err.get("Code", "Unknown")), int(status or 0)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        code, status = _error_code(exc)
        return code in _THROTTLING or status >= 500 or status == 429
    return isinstance(exc, (BotoCoreError, OSError, asyncio.TimeoutError))


class KvsControl:
    """One aiobotocore `kinesisvideo` client, the endpoint cache and the credential source.

    Use as `async with make_kvs(settings) as kvs:` or call `await kvs.close()`.
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None,
        region: str | None = None,
        endpoint_cache_seconds: float = 45 * 60.0,
        retention_hours: int = 1,
        use_emulator_keys: bool = False,
        tuning: Tuning = DEFAULT_TUNING,
        session: AioSession | None = None,
    ) -> None:
        self.endpoint_url = endpoint_url
        self._session = session or get_session()
        self.region = region or self._session.get_config_variable("region") or DEFAULT_REGION
        self._use_emulator_keys = use_emulator_keys
        self._retention_hours = retention_hours
        self.tuning = tuning
        # botocore builds and signs each request on the loop: a burst of sessions opening
        # together would otherwise start all their calls in one iteration (kvs_ingest.pacing).
        self._pacer = TurnPacer(tuning.control_calls_per_turn)
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self.endpoints = EndpointCache(self._get_data_endpoint, ttl=endpoint_cache_seconds)
        self.healthy = True  # the last control-plane call worked (for /readyz)
        self._keys_checked = False
        # LIST_FRAGMENTS endpoint -> (context manager, archived-media client), least recent first
        self._archived: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._archived_lock = asyncio.Lock()

    async def __aenter__(self) -> KvsControl:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._close_archived_clients()
        await self._stack.aclose()
        self._client = None

    async def _ensure_keys(self) -> None:
        if self._keys_checked:
            return
        self._keys_checked = True
        if self._use_emulator_keys and await self._session.get_credentials() is None:
            self._session.set_credentials(EMULATOR_ACCESS_KEY, EMULATOR_SECRET_KEY)

    async def client(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                await self._ensure_keys()
                config = AioConfig(
                    retries={"total_max_attempts": 1},
                    connect_timeout=5,
                    read_timeout=15,
                )
                self._client = await self._stack.enter_async_context(
                    self._session.create_client(
                        "kinesisvideo",
                        region_name=self.region,
                        endpoint_url=self.endpoint_url,
                        config=config,
                    )
                )
            return self._client

    async def warm_up(self) -> None:
        """Build the botocore clients and credential chain before the first speaker arrives.

        botocore builds a client synchronously: it scans its data directory and parses the
        service model and endpoint rules (40-100 ms of CPU). Done lazily, that ran inside the
        first sessions' set-up and held the event loop past 50 ms while other speakers waited.
        Nothing here talks to KVS; credentials that cannot be found yet are not an error here
        (the first call reports them, and /readyz says so).
        """
        await self.client()
        with contextlib.suppress(ControlPlaneError):
            await self.credentials()
        # The archived-media model, for ListFragments when a session resumes: building and
        # dropping one client leaves the parsed model in the session's loader cache.
        await self._archived_client(self.endpoint_url or "https://localhost")
        await self._close_archived_clients()

    async def _close_archived_clients(self) -> None:
        async with self._archived_lock:
            while self._archived:
                _, (manager, _client) = self._archived.popitem()
                await manager.__aexit__(None, None, None)

    async def credentials(self) -> FrozenCredentials:
        """Fresh frozen credentials from the chain, for one PutMedia connection."""
        await self._ensure_keys()
        creds = await self._session.get_credentials()
        if creds is None:
            raise ControlPlaneError(
                "credentials", "NoCredentials", "no AWS credentials found", retryable=True
            )
        frozen = await creds.get_frozen_credentials()
        expiry = getattr(creds, "_expiry_time", None)
        expires_at = expiry.timestamp() if expiry is not None else None
        return FrozenCredentials(frozen.access_key, frozen.secret_key, frozen.token, expires_at)

    async def call(self, api: str, **params: Any) -> dict[str, Any]:
        """One control-plane call with back-off; raises ControlPlaneError when it gives up."""
        client = await self.client()
        method = getattr(client, _snake(api))
        attempts = max(1, self.tuning.control_attempts)
        for attempt in range(attempts):
            try:
                await self._pacer.turn()
                result: dict[str, Any] = await method(**params)
            except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
                retry = _retryable(exc)
                code = _error_code(exc)[0] if isinstance(exc, ClientError) else type(exc).__name__
                CONTROL_CALLS.labels(api, code).inc()
                if isinstance(exc, ClientError) and not retry:
                    # The service answered: the control plane works, the request was refused.
                    raise ControlPlaneError(api, code, str(exc), retryable=False) from exc
                if attempt + 1 >= attempts:
                    self.healthy = False
                    raise ControlPlaneError(api, code, str(exc), retryable=True) from exc
                delay = self.tuning.backoff(attempt)
                log.info(
                    "kvs_control_retry",
                    api=api,
                    code=code,
                    attempt=attempt + 1,
                    delay=round(delay, 3),
                )
                await asyncio.sleep(delay)
                continue
            CONTROL_CALLS.labels(api, "ok").inc()
            self.healthy = True
            return result
        raise AssertionError("unreachable")

    async def ensure_stream(self, stream_name: str, *, tags: dict[str, str] | None = None) -> bool:
        """The stream exists and is ACTIVE when this returns; raises StreamNotActive or
        ControlPlaneError otherwise. True when this call created it (so it holds nothing)."""
        deadline = time.monotonic() + self.tuning.active_timeout
        delay = 0.1
        created = False
        ours = False
        while True:
            try:
                info = (await self.call("DescribeStream", StreamName=stream_name))["StreamInfo"]
            except ControlPlaneError as exc:
                if exc.code != "ResourceNotFoundException":
                    raise
                if created:
                    info = {"Status": "CREATING"}  # not visible yet: eventual consistency
                else:
                    created = True
                    ours = await self._create(stream_name, tags or {})
                    continue
            status = info.get("Status")
            if status == "ACTIVE":
                return ours
            if status == "DELETING":
                raise StreamNotActive(f"stream {stream_name} is being deleted")
            if time.monotonic() + delay > deadline:
                raise StreamNotActive(
                    f"stream {stream_name} still {status} after {self.tuning.active_timeout:.0f} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    async def _create(self, stream_name: str, tags: dict[str, str]) -> bool:
        params: dict[str, Any] = {
            "StreamName": stream_name,
            "MediaType": STREAM_MEDIA_TYPE,
            "DataRetentionInHours": self._retention_hours,
        }
        if tags:
            params["Tags"] = tags
        try:
            await self.call("CreateStream", **params)
            log.info("kvs_stream_created", stream=stream_name)
            return True
        except ControlPlaneError as exc:
            if exc.code != "ResourceInUseException":  # a concurrent creator won: fine
                raise
            return False

    async def _get_data_endpoint(self, stream_name: str, api: str) -> str:
        result = await self.call("GetDataEndpoint", StreamName=stream_name, APIName=api)
        return str(result["DataEndpoint"])

    async def data_endpoint(self, stream_name: str, api: str = "PUT_MEDIA") -> str:
        return await self.endpoints.get(stream_name, api)

    def invalidate_endpoint(self, stream_name: str, url: str | None = None) -> None:
        self.endpoints.invalidate(stream_name, "PUT_MEDIA", url)

    async def _archived_client(self, url: str) -> Any:
        """One client per data endpoint (AWS spreads streams over a few hosts), the most recently
        used `_ARCHIVED_CLIENTS` kept open."""
        async with self._archived_lock:
            entry = self._archived.get(url)
            if entry is not None:
                self._archived.move_to_end(url)
                return entry[1]
            await self._ensure_keys()
            config = AioConfig(
                retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=15
            )
            manager = self._session.create_client(
                "kinesis-video-archived-media",
                region_name=self.region,
                endpoint_url=url,
                config=config,
            )
            client = await manager.__aenter__()
            self._archived[url] = (manager, client)
            while len(self._archived) > _ARCHIVED_CLIENTS:
                _, (old, _client) = self._archived.popitem(last=False)
                await old.__aexit__(None, None, None)
            return client

    async def stored_end_ms(self, stream_name: str, *, lookback_seconds: float) -> int | None:
        """Where the stream's stored audio ends (absolute ms), from ListFragments over the
        fragments KVS received in the last `lookback_seconds`: max(ProducerTimestamp +
        FragmentLengthInMilliseconds). None when nothing was stored in that window. Raises
        ControlPlaneError (after back-off) when the look-up fails; the caller decides.

        A new process continues a session after this point, so its fragments never start
        before what KVS holds (error 4004) even when the old process's timeline ran ahead of
        the wall clock.
        """
        url = await self.endpoints.get(stream_name, "LIST_FRAGMENTS")
        client = await self._archived_client(url)
        now = time.time()
        params: dict[str, Any] = {
            "StreamName": stream_name,
            "MaxResults": 1000,
            "FragmentSelector": {
                "FragmentSelectorType": "SERVER_TIMESTAMP",
                "TimestampRange": {
                    "StartTimestamp": now - lookback_seconds,
                    # KVS's clock may run a little ahead of ours.
                    "EndTimestamp": now + 60.0,
                },
            },
        }
        end: int | None = None
        attempts = max(1, self.tuning.control_attempts)
        attempt = 0
        while True:
            try:
                await self._pacer.turn()
                page: dict[str, Any] = await client.list_fragments(**params)
            except (TimeoutError, ClientError, BotoCoreError, OSError) as exc:
                code = _error_code(exc)[0] if isinstance(exc, ClientError) else type(exc).__name__
                CONTROL_CALLS.labels("ListFragments", code).inc()
                attempt += 1
                if not _retryable(exc) or attempt >= attempts:
                    self.endpoints.invalidate(stream_name, "LIST_FRAGMENTS", url)
                    raise ControlPlaneError(
                        "ListFragments", code, str(exc), retryable=_retryable(exc)
                    ) from exc
                await asyncio.sleep(self.tuning.backoff(attempt - 1))
                continue
            CONTROL_CALLS.labels("ListFragments", "ok").inc()
            for frag in page.get("Fragments", []):
                produced = frag["ProducerTimestamp"]
                start_ms = round(produced.timestamp() * 1000)
                length = int(frag.get("FragmentLengthInMilliseconds") or 0)
                end = max(end or 0, start_ms + length)
            token = page.get("NextToken")
            if not token:
                return end
            params["NextToken"] = token  # same selector on every page


def _snake(api: str) -> str:
    out = []
    for i, ch in enumerate(api):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def control_endpoint(settings: Settings, endpoint_url: str | None = None) -> str | None:
    """The control-plane URL: the emulator's for the embedded/endpoint backends, else the
    standard chain's (AWS_ENDPOINT_URL_KINESIS_VIDEO is honoured by botocore itself)."""
    if endpoint_url:
        return endpoint_url
    if settings.kvs_backend is KvsBackend.AWS:
        return None
    return settings.kvs_endpoint_url


def make_kvs(
    settings: Settings, *, endpoint_url: str | None = None, tuning: Tuning = DEFAULT_TUNING
) -> KvsControl:
    """The control-plane client the session registry uses (aiobotocore, standard AWS chain)."""
    url = control_endpoint(settings, endpoint_url)
    return KvsControl(
        endpoint_url=url,
        endpoint_cache_seconds=settings.endpoint_cache_seconds,
        retention_hours=settings.stream_retention_hours,
        use_emulator_keys=settings.kvs_backend is not KvsBackend.AWS,
        tuning=tuning,
    )
