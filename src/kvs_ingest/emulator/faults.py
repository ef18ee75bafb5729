"""Fault injection and call statistics: the state behind `/_emulator/faults` and `/stats`.

Pure state with an injectable clock; the HTTP handlers and the PutMedia connection ask it what
to do. The fault kinds and their JSON are fixed in docs/INTERNALS.md ("emulator/").
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvs_ingest.emulator.errors import ApiError, invalid

APIS = frozenset(
    {
        "CreateStream",
        "DescribeStream",
        "ListStreams",
        "DeleteStream",
        "TagStream",
        "UntagStream",
        "ListTagsForStream",
        "UpdateDataRetention",
        "GetDataEndpoint",
        "PutMedia",
        "GetMedia",
        "ListFragments",
        "GetMediaForFragmentList",
    }
)
KINDS = frozenset(
    {
        "drop_after",
        "error_ack",
        "delay_acks",
        "withhold_acks",
        "refuse_connections",
        "throttle",
        "fail",
        "slow_active",
        "max_connection_seconds",
        "move_endpoint",
    }
)
_ERROR_NAMES = {500: "InternalFailure", 503: "ServiceUnavailableException"}


@dataclass(slots=True)
class Fault:
    id: int
    kind: str
    stream: str | None
    spec: dict[str, Any]
    created: float
    remaining: int = 0  # count-down for drop_after/error_ack/throttle/fail

    def matches(self, stream: str | None) -> bool:
        return self.stream is None or self.stream == stream

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **self.spec}


def _number(spec: dict[str, Any], key: str, *, minimum: float = 0) -> float:
    value = spec.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise invalid(f"fault {spec.get('kind')!r} needs a number {key!r} >= {minimum}")
    return float(value)


@dataclass(slots=True)
class FaultBook:
    clock: Callable[[], float]
    faults: list[Fault] = field(default_factory=list)
    endpoint_generation: int = 0
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, spec: dict[str, Any]) -> Fault:
        """Validate and store one fault; raises `ApiError` (400) for a bad one."""
        if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
            raise invalid(f"unknown fault kind; one of {sorted(KINDS)}")
        kind = spec["kind"]
        stream = spec.get("stream")
        if stream is not None and not isinstance(stream, str):
            raise invalid("'stream' must be a string")
        fault = Fault(next(self._ids), kind, stream, dict(spec), self.clock())
        if kind == "drop_after":
            fault.remaining = int(_number(spec, "fragments", minimum=0))
        elif kind == "error_ack":
            fault.remaining = int(_number(spec, "fragment", minimum=1))
            if not isinstance(spec.get("error_id", 5000), int):
                raise invalid("'error_id' must be an integer")
        elif kind in ("delay_acks", "refuse_connections", "slow_active"):
            _number(spec, "seconds")
        elif kind == "max_connection_seconds":
            _number(spec, "seconds", minimum=0.001)
        elif kind in ("throttle", "fail"):
            if spec.get("api") not in APIS:
                raise invalid(f"'api' must be one of {sorted(APIS)}")
            fault.remaining = int(_number(spec, "count", minimum=1))
            if kind == "fail":
                status = spec.get("status", 500)
                if not isinstance(status, int) or not 400 <= status <= 599:
                    raise invalid("'status' must be an HTTP error status")
        elif kind == "move_endpoint":
            self.endpoint_generation += 1
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    def _active(self, kind: str, stream: str | None) -> Fault | None:
        now = self.clock()
        for fault in self.faults:
            if fault.kind != kind or not fault.matches(stream):
                continue
            if kind == "refuse_connections" and now >= fault.created + fault.spec["seconds"]:
                continue
            return fault
        return None

    def _consume(self, fault: Fault) -> None:
        fault.remaining -= 1
        if fault.remaining <= 0:
            self.faults.remove(fault)

    # --- questions the handlers ask -------------------------------------------------------

    def api_error(self, api: str, stream: str | None) -> ApiError | None:
        """A throttle/fail fault for this call, counted down; or None."""
        for fault in self.faults:
            if fault.kind not in ("throttle", "fail") or fault.spec["api"] != api:
                continue
            if not fault.matches(stream):
                continue
            self._consume(fault)
            if fault.kind == "throttle":
                return ApiError(400, "ClientLimitExceededException", "Rate exceeded (injected)")
            status = int(fault.spec.get("status", 500))
            name = str(fault.spec.get("error") or _ERROR_NAMES.get(status, "InternalFailure"))
            return ApiError(status, name, "Injected failure")
        return None

    def refuse_connection(self, stream: str) -> ApiError | None:
        fault = self._active("refuse_connections", stream)
        if fault is None:
            return None
        status = int(fault.spec.get("status", 503))
        name = str(
            fault.spec.get("error") or _ERROR_NAMES.get(status, "ServiceUnavailableException")
        )
        return ApiError(status, name, "PutMedia connections refused (injected)")

    def claim_drop(self, stream: str) -> int | None:
        """For a new PutMedia connection: drop it after this many fragments, or None."""
        fault = self._active("drop_after", stream)
        if fault is None:
            return None
        self.faults.remove(fault)
        return fault.remaining

    def error_for_fragment(self, stream: str) -> tuple[int, bool] | None:
        """Count one received fragment; (error id, keep the connection open) when it fails."""
        for fault in list(self.faults):
            if fault.kind != "error_ack" or not fault.matches(stream):
                continue
            fault.remaining -= 1
            if fault.remaining <= 0:
                self.faults.remove(fault)
                return int(fault.spec.get("error_id", 5000)), bool(fault.spec.get("keep_open"))
        return None

    def ack_delay(self, stream: str) -> float:
        fault = self._active("delay_acks", stream)
        return float(fault.spec["seconds"]) if fault else 0.0

    def withhold_acks(self, stream: str) -> bool:
        return self._active("withhold_acks", stream) is not None

    def active_delay(self, stream: str) -> float | None:
        fault = self._active("slow_active", stream)
        return float(fault.spec["seconds"]) if fault else None

    def max_connection_seconds(self, stream: str) -> float | None:
        fault = self._active("max_connection_seconds", stream)
        return float(fault.spec["seconds"]) if fault else None

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.faults]


@dataclass(slots=True)
class Stats:
    """Counters for `GET /_emulator/stats`: calls per API per stream, connections, fragments."""

    calls: defaultdict[str, defaultdict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    putmedia_connections: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    fragments_persisted: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    fragments_errored: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    short_fragments: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    def call(self, api: str, stream: str | None) -> None:
        self.calls[api][stream or ""] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": {api: dict(per) for api, per in self.calls.items()},
            "calls_total": {api: sum(per.values()) for api, per in self.calls.items()},
            "putmedia_connections": dict(self.putmedia_connections),
            "fragments_persisted": dict(self.fragments_persisted),
            "fragments_errored": dict(self.fragments_errored),
            "short_fragments": dict(self.short_fragments),
            "ack_errors": dict(self.errors),
        }
