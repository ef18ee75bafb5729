"""The emulator's settings: one frozen dataclass, from arguments, `KVS_EMULATOR_*` or CLI flags.

Credentials come from the standard AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of the emulator's
environment (`test`/`test` when unset), so a producer and the emulator started from one shell
agree without configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kvs_ingest.emulator import limits

ENV_PREFIX = "KVS_EMULATOR_"


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    data_dir: Path = Path(".kvs-data")
    host: str = "127.0.0.1"
    port: int = 0
    access_key: str = field(default="test", repr=False)
    secret_key: str = field(default="test", repr=False)
    region: str = "us-east-1"
    account_id: str = "123456789012"
    # What GetDataEndpoint returns (e.g. http://emulator:4567 on a Docker network); None: our URL.
    advertised_url: str | None = None
    # A new stream is CREATING this long, then ACTIVE (AWS: a few seconds).
    active_delay_seconds: float = 1.0
    # PutMedia limits (KVS-PROTOCOL.md "Limits").
    max_connection_seconds: float = limits.MAX_CONNECTION_SECONDS
    min_fragment_ms: int = 0  # 0: no minimum (AWS publishes none)
    max_fragment_ms: int = limits.MAX_FRAGMENT_MS
    max_fragment_bytes: int = limits.MAX_FRAGMENT_BYTES
    idle_timeout_seconds: float = limits.IDLE_TIMEOUT_SECONDS
    idle_ack_seconds: float = limits.IDLE_ACK_SECONDS
    putmedia_calls_per_second: int = limits.PUTMEDIA_CALLS_PER_SECOND
    # GetMedia ends its response once caught up and nothing new arrived for this long.
    get_media_idle_seconds: float = 3.0
    # Allowed clock skew of a signature's x-amz-date; None skips the check (replaying old captures).
    clock_skew_seconds: float | None = limits.CLOCK_SKEW_SECONDS
    # "stream": a fragment must start after the stream's last stored fragment (AWS, error 4004);
    # "connection": only after the previous fragment of the same PutMedia connection.
    timecode_check: str = "stream"
    # Length of one retention "hour" in seconds; tests shorten it to see retention act.
    retention_hour_seconds: float = 3600.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.timecode_check not in ("stream", "connection"):
            raise ValueError("timecode_check must be 'stream' or 'connection'")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0..65535")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> EmulatorConfig:
        """`KVS_EMULATOR_<FIELD>` variables plus AWS credentials; `overrides` win (CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "access_key": env.get("AWS_ACCESS_KEY_ID") or "test",
            "secret_key": env.get("AWS_SECRET_ACCESS_KEY") or "test",
        }
        if env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"):
            values["region"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        types = {f.name: f.type for f in fields(cls)}
        for name, type_name in types.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            values[name] = _convert(name, str(type_name), raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _convert(name: str, type_name: str, raw: str) -> Any:
    try:
        if "float | None" in type_name:
            return None if raw.lower() in ("", "none", "off") else float(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name.startswith("int"):
            return int(raw)
        if "Path" in type_name:
            return Path(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: not a number (got {raw!r})") from None
    return raw or None if "None" in type_name else raw
