"""The service's settings: one class, read from `KVS_INGEST_*` environment variables.

A bad value stops the process at start with one line that names the variable (see
`load_settings`), never later in the middle of a session.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "KVS_INGEST_"


class AuthMode(StrEnum):
    NONE = "none"
    HS256 = "hs256"
    JWKS = "jwks"


class KvsBackend(StrEnum):
    EMBEDDED = "embedded"  # start the emulator in-process on loopback
    ENDPOINT = "endpoint"  # a KVS-compatible endpoint at KVS_ENDPOINT_URL (the emulator)
    AWS = "aws"  # the real service, found through the standard AWS chain


class LogFormat(StrEnum):
    AUTO = "auto"  # JSON when stderr is not a terminal, console otherwise
    JSON = "json"
    CONSOLE = "console"


class Settings(BaseSettings):
    """Everything the service can be told; DESIGN.md §4.2 is the contract."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Comma-separated origins allowed to open speaker sockets; "*" allows any, empty allows
    # only clients that send no Origin (non-browser clients).
    allowed_origins: str = "*"

    auth_mode: AuthMode = AuthMode.NONE
    auth_secret: str | None = Field(None, repr=False)
    jwks_url: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None

    kvs_backend: KvsBackend | None = (
        None  # None: AWS when an endpoint/region says so, else embedded
    )
    kvs_endpoint_url: str | None = None
    embedded_data_dir: Path = Path(".kvs-data")
    stream_name_template: str = "session-{session_id}"
    stream_retention_hours: int = Field(1, ge=0, le=87600)

    fragment_ms: int = Field(1000, ge=1000, le=10000)
    buffer_max_seconds: float = Field(120.0, gt=0, le=3600)
    max_connections: int = Field(2000, ge=1)
    max_message_bytes: int = Field(1 << 20, ge=1024)
    session_grace_seconds: float = Field(30.0, ge=0)
    drain_timeout_seconds: float = Field(30.0, gt=0)
    endpoint_cache_seconds: float = Field(45 * 60.0, gt=0)
    putmedia_rotate_seconds: float = Field(30 * 60.0, gt=0)
    # A socket that sends no media this long after opening, or goes silent this long, gets 4408.
    start_timeout_seconds: float = Field(15.0, gt=0)
    idle_timeout_seconds: float = Field(60.0, gt=0)
    # Audio-rate limit (4429): a bucket of this many seconds of audio, refilled at this multiple
    # of real time, lets a client catch up after a stall but not stream faster for long.
    rate_burst_seconds: float = Field(10.0, gt=0)
    rate_limit_factor: float = Field(1.25, ge=1.0)

    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.AUTO
    demo_page: bool = False

    @field_validator("stream_name_template")
    @classmethod
    def _template_names_session(cls, value: str) -> str:
        if "{session_id}" not in value:
            raise ValueError("must contain {session_id}")
        if not re.fullmatch(r"[A-Za-z0-9_.{}-]+", value):
            raise ValueError("may hold only letters, digits, '_', '.', '-' and {session_id}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.auth_mode is AuthMode.HS256 and not self.auth_secret:
            raise ValueError("KVS_INGEST_AUTH_SECRET is required when KVS_INGEST_AUTH_MODE=hs256")
        if self.auth_mode is AuthMode.JWKS and not self.jwks_url:
            raise ValueError("KVS_INGEST_JWKS_URL is required when KVS_INGEST_AUTH_MODE=jwks")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("KVS_INGEST_TLS_CERT_FILE and KVS_INGEST_TLS_KEY_FILE go together")
        if self.kvs_backend is KvsBackend.ENDPOINT and not self.kvs_endpoint_url:
            raise ValueError(
                "KVS_INGEST_KVS_ENDPOINT_URL is required when KVS_INGEST_KVS_BACKEND=endpoint"
            )
        return self

    @property
    def origins(self) -> frozenset[str] | None:
        """The allowed Origin values, or None when any origin is allowed."""
        items = {o.strip() for o in self.allowed_origins.split(",") if o.strip()}
        return None if "*" in items else frozenset(items)

    def stream_name(self, session_id: str) -> str:
        return self.stream_name_template.format(session_id=session_id)


class SettingsError(Exception):
    """A setting has a bad value; the message is one line naming the variable."""


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus `overrides`, for tests) or raise SettingsError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "__root__"]
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if loc:
            parts.append(f"{ENV_PREFIX}{loc[0].upper()}: {msg} (got {err.get('input')!r})")
        else:
            parts.append(msg)
    return "invalid settings: " + "; ".join(parts)
