"""The emulator's HTTP server: KVS's control plane, PutMedia, GetMedia, archived media, and the
fault/inspection API under `/_emulator/` (a path AWS never uses).

Every KVS call is SigV4-verified against the configured credentials before anything else, then
counted in the stats, then offered to the fault book. Handlers raise `ApiError`; `_error_response`
is the one place that turns it into AWS's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from kvs_ingest.emulator import limits
from kvs_ingest.emulator.config import EmulatorConfig
from kvs_ingest.emulator.errors import ApiError, in_use, invalid, not_found, throttled
from kvs_ingest.emulator.faults import FaultBook, Stats
from kvs_ingest.emulator.putmedia import PutMediaConnection
from kvs_ingest.emulator.sigv4 import EMPTY_SHA256, SigV4Verifier
from kvs_ingest.emulator.storage import (
    FragmentMeta,
    Store,
    StreamRecord,
    new_version,
    render,
)
from kvs_ingest.logging import get_logger
from kvs_ingest.mkv.writer import tags as mkv_tags

log = get_logger(__name__)

_NAME_RE = re.compile(limits.STREAM_NAME_PATTERN)
_API_NAMES = frozenset(
    {
        "PUT_MEDIA",
        "GET_MEDIA",
        "LIST_FRAGMENTS",
        "GET_MEDIA_FOR_FRAGMENT_LIST",
        "GET_HLS_STREAMING_SESSION_URL",
        "GET_DASH_STREAMING_SESSION_URL",
        "GET_CLIP",
        "GET_IMAGES",
    }
)
_CONTROL = {
    "createStream": "CreateStream",
    "describeStream": "DescribeStream",
    "listStreams": "ListStreams",
    "deleteStream": "DeleteStream",
    "tagStream": "TagStream",
    "untagStream": "UntagStream",
    "listTagsForStream": "ListTagsForStream",
    "updateDataRetention": "UpdateDataRetention",
    "getDataEndpoint": "GetDataEndpoint",
}
_DATA = {
    "getMedia": "GetMedia",
    "listFragments": "ListFragments",
    "getMediaForFragmentList": "GetMediaForFragmentList",
}

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _error_response(err: ApiError, request_id: str) -> web.Response:
    return web.json_response(
        {"message": err.message},
        status=err.status,
        headers={"x-amzn-ErrorType": f"{err.code}:", "x-amzn-RequestId": request_id},
    )


class Emulator:
    """A local KVS: `await start()`, use `url`, `await stop()`. One per data directory."""

    def __init__(self, config: EmulatorConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.store = Store(config.data_dir, retention_hour_seconds=config.retention_hour_seconds)
        self.faults = FaultBook(clock)
        self.stats = Stats()
        self._verifier = SigV4Verifier(
            config.access_key, config.secret_key, clock_skew_seconds=config.clock_skew_seconds
        )
        self._runner: web.AppRunner | None = None
        self._port = config.port
        self._puts: dict[str, PutMediaConnection] = {}
        self._put_calls: defaultdict[str, deque[float]] = defaultdict(deque)
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._log = log.bind(component="emulator")

    # --- life cycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    def data_endpoint(self) -> str:
        base = (self.config.advertised_url or self.url).rstrip("/")
        generation = self.faults.endpoint_generation
        return base if generation == 0 else f"{base}/ep/{generation}"

    async def start(self) -> None:
        await self.store.load()
        app = web.Application(client_max_size=8 * 1024 * 1024)
        for path, api in _CONTROL.items():
            app.router.add_post(f"/{path}", self._control_handler(api))
        for prefix in ("", "/ep/{generation}"):
            app.router.add_post(f"{prefix}/putMedia", self._put_media)
            app.router.add_post(f"{prefix}/getMedia", self._get_media)
            app.router.add_post(f"{prefix}/listFragments", self._data_handler("ListFragments"))
            app.router.add_post(f"{prefix}/getMediaForFragmentList", self._get_media_for_list)
        app.router.add_get("/_emulator/faults", self._faults_get)
        app.router.add_post("/_emulator/faults", self._faults_post)
        app.router.add_delete("/_emulator/faults", self._faults_delete)
        app.router.add_get("/_emulator/stats", self._stats_get)
        app.router.add_get("/_emulator/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        for address in self._runner.addresses:  # the port the OS chose for port 0
            if isinstance(address, tuple):
                self._port = int(address[1])
                break
        self._sweeper = asyncio.create_task(self._sweep_loop())
        self._log.info(
            "emulator_started",
            url=self.url,
            data_endpoint=self.data_endpoint(),
            data_dir=str(self.config.data_dir),
            streams=len(self.store.streams),
        )

    async def stop(self) -> None:
        """End every open request and close the server; what was PERSISTED stays on disk."""
        self._closing.set()
        for conn in list(self._puts.values()):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _sweep_loop(self) -> None:
        interval = max(0.2, min(60.0, self.config.retention_hour_seconds / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self.store.sweep(self.clock())
            except OSError as exc:
                self._log.warning("retention_sweep_failed", error=str(exc))
                continue
            if removed:
                self._log.info("retention_removed_fragments", count=removed)

    # --- shared request steps ------------------------------------------------------------

    def _verify(self, request: web.Request, body: bytes | None) -> None:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
        declared = request.headers.get("x-amz-content-sha256")
        hashes = [declared] if declared else []
        if body is None:  # the streamed PutMedia body is signed as an empty payload
            hashes.append(EMPTY_SHA256)
        else:
            hashes.append(hashlib.sha256(body).hexdigest())
        self._verifier.verify(
            request.method,
            request.rel_url.raw_path,
            list(request.rel_url.query.items()),
            headers,
            hashes,
            datetime.now(UTC)
            if self.clock is time.time
            else datetime.fromtimestamp(self.clock(), UTC),
        )

    def _stream(self, body: dict[str, Any], *, required: bool = True) -> StreamRecord:
        name = body.get("StreamName")
        arn = body.get("StreamARN")
        if name is None and arn is None:
            raise invalid("StreamName or StreamARN is required")
        if name is not None and (not isinstance(name, str) or not _NAME_RE.fullmatch(name)):
            raise invalid("StreamName is invalid")
        rec = None
        if name is not None:
            rec = self.store.streams.get(name)
            if rec is not None and arn is not None and rec.arn != arn:
                rec = None
        elif isinstance(arn, str):
            rec = next((r for r in self.store.streams.values() if r.arn == arn), None)
        if rec is None:
            raise not_found("The requested stream is not found or not active.")
        return rec

    @staticmethod
    def _stream_label(body: dict[str, Any]) -> str | None:
        name = body.get("StreamName")
        if isinstance(name, str):
            return name
        arn = body.get("StreamARN")
        if isinstance(arn, str) and "/" in arn:
            return arn.split("/")[1]
        return None

    async def _json_call(
        self, request: web.Request, api: str, handler: Handler
    ) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        raw = await request.read()
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                body = {}
        except ValueError:
            body = None
        stream = self._stream_label(body or {})
        try:
            self._verify(request, raw)
            self.stats.call(api, stream)
            if body is None:
                raise ApiError(400, "SerializationException", "Request body is not valid JSON")
            injected = self.faults.api_error(api, stream)
            if injected is not None:
                raise injected
            result = await handler(body)
        except ApiError as err:
            self._log.debug("api_error", api=api, code=err.code, stream=stream)
            return _error_response(err, request_id)
        return web.json_response(result, headers={"x-amzn-RequestId": request_id})

    def _control_handler(self, api: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        method = getattr(self, "_" + re.sub(r"(?<!^)([A-Z])", r"_\1", api).lower())

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._json_call(request, api, method)

        return handle

    def _data_handler(self, api: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        return self._control_handler(api)

    # --- control plane -------------------------------------------------------------------

    async def _create_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("StreamName")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise invalid("StreamName must match [a-zA-Z0-9_.-]{1,256}")
        retention = body.get("DataRetentionInHours", 0)
        if not isinstance(retention, int) or retention < 0:
            raise invalid("DataRetentionInHours must be a non-negative integer")
        tags = body.get("Tags") or {}
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            raise invalid("Tags must map strings to strings")
        if len(tags) > limits.MAX_TAGS_PER_STREAM:
            raise ApiError(
                400, "TagsPerResourceExceededLimitException", "At most 50 tags per stream"
            )
        if name in self.store.streams:
            raise in_use(f"The stream {name} already exists.")
        now = self.clock()
        delay = self.faults.active_delay(name)
        rec = StreamRecord(
            name=name,
            arn=(
                f"arn:aws:kinesisvideo:{self.config.region}:{self.config.account_id}:"
                f"stream/{name}/{int(now * 1000)}"
            ),
            device_name=_opt_str(body, "DeviceName"),
            media_type=_opt_str(body, "MediaType"),
            kms_key_id=_opt_str(body, "KmsKeyId")
            or f"arn:aws:kms:{self.config.region}:{self.config.account_id}:alias/aws/kinesisvideo",
            version=new_version(),
            creation_time=round(now, 3),
            active_at=now + (self.config.active_delay_seconds if delay is None else delay),
            retention_hours=retention,
            tags=dict(tags),
        )
        await self.store.add_stream(rec)
        return {"StreamARN": rec.arn}

    async def _describe_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"StreamInfo": self._stream(body).info(self.clock())}

    async def _list_streams(self, body: dict[str, Any]) -> dict[str, Any]:
        max_results = body.get("MaxResults", 10000)
        if not isinstance(max_results, int) or not 1 <= max_results <= 10000:
            raise invalid("MaxResults must be 1..10000")
        names = sorted(self.store.streams)
        condition = body.get("StreamNameCondition")
        if condition:
            if condition.get("ComparisonOperator", "BEGINS_WITH") != "BEGINS_WITH":
                raise invalid("ComparisonOperator must be BEGINS_WITH")
            prefix = str(condition.get("ComparisonValue", ""))
            names = [n for n in names if n.startswith(prefix)]
        start = _token_offset(body.get("NextToken"))
        page = names[start : start + max_results]
        now = self.clock()
        result: dict[str, Any] = {"StreamInfoList": [self.store.streams[n].info(now) for n in page]}
        if start + max_results < len(names):
            result["NextToken"] = str(start + max_results)
        return result

    async def _delete_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._stream(body)
        version = body.get("CurrentVersion")
        if version is not None and version != rec.version:
            raise ApiError(400, "VersionMismatchException", "The stream version does not match.")
        await self.store.delete_stream(rec)
        conn = self._puts.get(rec.name)
        if conn is not None:
            self._log.info("stream_deleted_while_writing", stream=rec.name)
        return {}

    async def _tag_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._stream(body)
        tags = body.get("Tags")
        if not isinstance(tags, dict) or not tags:
            raise invalid("Tags is required")
        merged = {**rec.tags, **{str(k): str(v) for k, v in tags.items()}}
        if len(merged) > limits.MAX_TAGS_PER_STREAM:
            raise ApiError(
                400, "TagsPerResourceExceededLimitException", "At most 50 tags per stream"
            )
        rec.tags = merged
        await self.store.save_stream(rec)
        return {}

    async def _untag_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._stream(body)
        keys = body.get("TagKeyList")
        if not isinstance(keys, list) or not keys:
            raise invalid("TagKeyList is required")
        rec.tags = {k: v for k, v in rec.tags.items() if k not in keys}
        await self.store.save_stream(rec)
        return {}

    async def _list_tags_for_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"Tags": dict(self._stream(body).tags)}

    async def _update_data_retention(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._stream(body)
        version = body.get("CurrentVersion")
        if not isinstance(version, str):
            raise invalid("CurrentVersion is required")
        operation = body.get("Operation")
        change = body.get("DataRetentionChangeInHours")
        if operation not in ("INCREASE_DATA_RETENTION", "DECREASE_DATA_RETENTION"):
            raise invalid("Operation must be INCREASE_DATA_RETENTION or DECREASE_DATA_RETENTION")
        if not isinstance(change, int) or change < 1:
            raise invalid("DataRetentionChangeInHours must be a positive integer")
        if version != rec.version:
            raise ApiError(400, "VersionMismatchException", "The stream version does not match.")
        hours = rec.retention_hours + (change if operation.startswith("INCREASE") else -change)
        if hours < 0:
            raise invalid("DataRetentionInHours cannot go below 0")
        rec.retention_hours = hours
        rec.version = new_version()
        await self.store.save_stream(rec)
        return {}

    async def _get_data_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("APIName") not in _API_NAMES:
            raise invalid(f"APIName must be one of {sorted(_API_NAMES)}")
        self._stream(body)
        return {"DataEndpoint": self.data_endpoint()}

    # --- archived media ------------------------------------------------------------------

    async def _list_fragments(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = self._stream(body)
        max_results = body.get("MaxResults", 1000)
        if not isinstance(max_results, int) or not 1 <= max_results <= 1000:
            raise invalid("MaxResults must be 1..1000")
        frags = self.store.visible(rec, self.clock())
        selector = body.get("FragmentSelector")
        if selector is not None:
            kind = selector.get("FragmentSelectorType")
            rng = selector.get("TimestampRange") or {}
            if kind not in ("PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"):
                raise invalid("FragmentSelectorType must be PRODUCER_TIMESTAMP or SERVER_TIMESTAMP")
            if "StartTimestamp" not in rng or "EndTimestamp" not in rng:
                raise invalid("TimestampRange needs StartTimestamp and EndTimestamp")
            lo, hi = _ms(rng["StartTimestamp"]), _ms(rng["EndTimestamp"])
            if hi < lo:
                raise invalid("EndTimestamp is before StartTimestamp")
            by_producer = kind == "PRODUCER_TIMESTAMP"
            frags = [
                f for f in frags if lo <= (f.producer_ms if by_producer else f.server_ms) <= hi
            ]
        start = _token_offset(body.get("NextToken"))
        page = frags[start : start + max_results]
        result: dict[str, Any] = {
            "Fragments": [
                {
                    "FragmentNumber": f.number,
                    "FragmentSizeInBytes": f.size,
                    "ProducerTimestamp": f.producer_ms / 1000,
                    "ServerTimestamp": f.server_ms / 1000,
                    "FragmentLengthInMilliseconds": f.duration_ms,
                }
                for f in page
            ]
        }
        if start + max_results < len(frags):
            result["NextToken"] = str(start + max_results)
        return result

    async def _get_media_for_list(self, request: web.Request) -> web.StreamResponse:
        metas: list[FragmentMeta] = []
        rec_box: list[StreamRecord] = []

        async def check(body: dict[str, Any]) -> dict[str, Any]:
            rec = self._stream(body)
            numbers = body.get("Fragments")
            if not isinstance(numbers, list) or not 1 <= len(numbers) <= 1000:
                raise invalid("Fragments must list 1 to 1000 fragment numbers")
            known = {f.number: f for f in self.store.visible(rec, self.clock())}
            for number in numbers:
                if number not in known:
                    raise not_found(f"Fragment {number} is not found.")
                metas.append(known[number])
            rec_box.append(rec)
            return {}

        answer = await self._json_call(request, "GetMediaForFragmentList", check)
        if answer.status != 200:
            return answer
        response = self._media_response()
        await response.prepare(request)
        for meta in metas:
            if not await self._send_fragment(response, rec_box[0], meta):
                break
        await response.write_eof()
        return response

    # --- GetMedia ------------------------------------------------------------------------

    def _media_response(self) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "video/webm", "x-amzn-RequestId": str(uuid.uuid4())},
        )
        response.enable_chunked_encoding()
        return response

    async def _send_fragment(
        self, response: web.StreamResponse, rec: StreamRecord, meta: FragmentMeta
    ) -> bool:
        try:
            stored = await self.store.read(rec, meta)
        except OSError:
            return False  # removed by retention or deletion meanwhile
        try:
            await response.write(render(stored, meta, int(self.clock() * 1000)))
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def _get_media(self, request: web.Request) -> web.StreamResponse:
        plan: dict[str, Any] = {}

        async def check(body: dict[str, Any]) -> dict[str, Any]:
            rec = self._stream(body)
            selector = body.get("StartSelector")
            if not isinstance(selector, dict):
                raise invalid("StartSelector is required")
            plan["rec"] = rec
            plan["after"], plan["error"] = self._start_after(rec, selector)
            return {}

        answer = await self._json_call(request, "GetMedia", check)
        if answer.status != 200:
            return answer
        rec: StreamRecord = plan["rec"]
        response = self._media_response()
        await response.prepare(request)
        if plan["error"]:
            await response.write(
                mkv_tags(
                    [
                        ("AWS_KINESISVIDEO_ERROR_CODE", "REQUESTED_FRAGMENT_NOT_FOUND"),
                        ("AWS_KINESISVIDEO_ERROR_ID", "4000"),
                    ]
                )
            )
            await response.write_eof()
            return response
        after: str | None = plan["after"]
        idle = self.config.get_media_idle_seconds
        while not self._closing.is_set():
            changed = rec.changed
            pending = [
                f
                for f in self.store.visible(rec, self.clock())
                if after is None or f.number > after
            ]
            for meta in pending:
                if not await self._send_fragment(response, rec, meta):
                    return response
                after = meta.number
            if rec.deleted:
                break
            waiters = [
                asyncio.ensure_future(changed.wait()),
                asyncio.ensure_future(self._closing.wait()),
            ]
            done, pending_waits = await asyncio.wait(
                waiters, timeout=idle, return_when=asyncio.FIRST_COMPLETED
            )
            for waiter in pending_waits:
                waiter.cancel()
            if not done:
                break  # caught up and idle: end the response cleanly
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response

    def _start_after(self, rec: StreamRecord, selector: dict[str, Any]) -> tuple[str | None, bool]:
        """The fragment number to stream after (None: from the first), and whether the selector
        names a fragment that does not exist (GetMedia error 4000)."""
        kind = selector.get("StartSelectorType")
        frags = self.store.visible(rec, self.clock())
        before_first = "0"
        if kind == "EARLIEST":
            return before_first, False
        if kind == "NOW":
            return (frags[-1].number if frags else before_first), False
        if kind == "FRAGMENT_NUMBER":
            number = selector.get("AfterFragmentNumber")
            if not isinstance(number, str):
                raise invalid("AfterFragmentNumber is required for FRAGMENT_NUMBER")
            index = next((i for i, f in enumerate(frags) if f.number == number), None)
            if index is None:
                return None, True
            return (frags[index - 1].number if index else before_first), False
        if kind == "CONTINUATION_TOKEN":
            token = selector.get("ContinuationToken")
            if not isinstance(token, str) or not token.isdigit():
                raise invalid("ContinuationToken is required for CONTINUATION_TOKEN")
            return token, False
        if kind in ("PRODUCER_TIMESTAMP", "SERVER_TIMESTAMP"):
            if "StartTimestamp" not in selector:
                raise invalid("StartTimestamp is required for a timestamp selector")
            at = _ms(selector["StartTimestamp"])
            for i, f in enumerate(frags):
                # producer time: the fragment that contains the instant; server time: the
                # first fragment received at or after it
                if (
                    f.producer_ms + f.duration_ms > at
                    if kind == "PRODUCER_TIMESTAMP"
                    else f.server_ms >= at
                ):
                    return (frags[i - 1].number if i else before_first), False
            return (frags[-1].number if frags else before_first), False
        raise invalid("StartSelectorType is invalid")

    # --- PutMedia ------------------------------------------------------------------------

    async def _put_media(self, request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        headers = request.headers
        name = headers.get("x-amzn-stream-name")
        arn = headers.get("x-amzn-stream-arn")
        label = name or (arn.split("/")[1] if arn and "/" in arn else None)
        try:
            self._verify(request, None)
            self.stats.call("PutMedia", label)
            generation = int(request.match_info.get("generation", "0") or 0)
            if generation != self.faults.endpoint_generation:
                raise ApiError(
                    400,
                    "InvalidEndpointException",
                    "This endpoint no longer serves the stream; call GetDataEndpoint again.",
                )
            injected = self.faults.api_error("PutMedia", label)
            if injected is not None:
                raise injected
            rec = self._stream({"StreamName": name, "StreamARN": arn})
            refused = self.faults.refuse_connection(rec.name)
            if refused is not None:
                raise refused
            if rec.status(self.clock()) != "ACTIVE":
                raise not_found(f"The stream {rec.name} is not ACTIVE yet.")
            self._rate_limit(rec.name)
            if rec.name in self._puts:
                raise ApiError(
                    400,
                    "ConnectionLimitExceededException",
                    "A PutMedia connection to this stream is already open.",
                )
            timecode_type = headers.get("x-amzn-fragment-timecode-type")
            if timecode_type not in ("ABSOLUTE", "RELATIVE"):
                raise invalid("x-amzn-fragment-timecode-type must be ABSOLUTE or RELATIVE")
            start_ms = _start_timestamp(headers.get("x-amzn-producer-start-timestamp"))
        except ApiError as err:
            self._log.info("putmedia_refused", stream=label, code=err.code)
            return _error_response(err, request_id)
        conn = PutMediaConnection(
            self,
            request,
            rec,
            relative=timecode_type == "RELATIVE",
            start_ms=start_ms,
            request_id=request_id,
        )
        self._puts[rec.name] = conn
        self.stats.putmedia_connections[rec.name] += 1
        return await conn.run()

    def release_put(self, conn: PutMediaConnection) -> None:
        for name, held in list(self._puts.items()):
            if held is conn:
                del self._puts[name]

    def _rate_limit(self, stream: str) -> None:
        now = self.clock()
        calls = self._put_calls[stream]
        while calls and calls[0] <= now - 1.0:
            calls.popleft()
        if len(calls) >= self.config.putmedia_calls_per_second:
            raise throttled("More than 5 PutMedia calls per second on this stream.")
        calls.append(now)

    # --- fault and inspection API --------------------------------------------------------

    async def _faults_get(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"faults": self.faults.to_json(), "endpoint": self.data_endpoint()}
        )

    async def _faults_post(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
        except ValueError:
            return web.json_response({"message": "body is not JSON"}, status=400)
        try:
            fault = self.faults.add(spec)
        except ApiError as err:
            return web.json_response({"message": err.message}, status=400)
        self._log.info("fault_added", fault=fault.to_json())
        return web.json_response({**fault.to_json(), "endpoint": self.data_endpoint()})

    async def _faults_delete(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"faults": []})

    async def _stats_get(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_json())

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "streams": len(self.store.streams)})


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid(f"{key} must be a string")
    return value


def _token_offset(token: object) -> int:
    if token is None:
        return 0
    if not isinstance(token, str) or not token.isdigit():
        raise invalid("NextToken is invalid")
    return int(token)


def _ms(value: object) -> int:
    """A JSON timestamp (botocore sends epoch seconds) in milliseconds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid("timestamp must be epoch seconds")
    try:
        return int(Decimal(str(value)) * 1000)
    except InvalidOperation:
        raise invalid("timestamp must be epoch seconds") from None


def _start_timestamp(value: str | None) -> int:
    """`x-amzn-producer-start-timestamp`: any decimal seconds (producer-c sends `.71`)."""
    if value is None:
        raise invalid("x-amzn-producer-start-timestamp is required")
    try:
        seconds = Decimal(value.strip())
    except InvalidOperation:
        raise invalid("x-amzn-producer-start-timestamp must be seconds since the epoch") from None
    if seconds < 0:
        raise invalid("x-amzn-producer-start-timestamp must be positive")
    return int(seconds * 1000)
