"""`kvs-ingest serve`: the service, on uvloop, until SIGTERM/SIGINT; then the drain, exit 0.

With no KVS configured (KVS_BACKEND unset and no AWS endpoint or region in the environment, or
KVS_BACKEND=embedded) it starts the emulator in-process on loopback with its data in
EMBEDDED_DATA_DIR, and says so in its first log line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from kvs_ingest.config import AuthMode, KvsBackend, Settings, load_settings
from kvs_ingest.logging import configure_logging, get_logger

log = get_logger(__name__)

# Environment variables that mean "talk to AWS" when KVS_BACKEND is not set.
_AWS_HINTS = (
    "AWS_ENDPOINT_URL_KINESIS_VIDEO",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (KVS_INGEST_HOST)")
    parser.add_argument("--port", type=int, help="listen port (KVS_INGEST_PORT; 0 = any free)")


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = load_settings(**overrides)
    configure_logging(settings.log_level, str(settings.log_format))
    loop_factory = _uvloop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(settings))


def _uvloop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return None
    return uvloop.new_event_loop


def resolve_backend(settings: Settings, env: dict[str, str] | None = None) -> KvsBackend:
    """Which KVS the service writes to; None in settings means embedded unless AWS is hinted."""
    if settings.kvs_backend is not None:
        return settings.kvs_backend
    env = dict(os.environ) if env is None else env
    return KvsBackend.AWS if any(env.get(k) for k in _AWS_HINTS) else KvsBackend.EMBEDDED


@dataclass
class Backend:
    """The control-plane client the registry uses, and the embedded emulator if we run one."""

    kvs: Any
    emulator: Any | None
    url: str | None


@asynccontextmanager
async def open_backend(settings: Settings) -> AsyncIterator[Backend]:
    """Start the embedded emulator if asked, and the control-plane client; stop both after."""
    from kvs_ingest.kvs.control import make_kvs

    backend = resolve_backend(settings)
    emulator = None
    url: str | None = None
    if backend is KvsBackend.EMBEDDED:
        from kvs_ingest.emulator import Emulator, EmulatorConfig

        data_dir = settings.embedded_data_dir.resolve()
        log.info(
            "kvs_backend",
            backend="embedded",
            note="no KVS configured: starting the KVS emulator in-process on loopback",
            data_dir=str(data_dir),
        )
        # The emulator checks SigV4 against AWS_ACCESS_KEY_ID/SECRET (test/test when unset);
        # our producer signs with the same chain, so both read one environment.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        emulator = Emulator(EmulatorConfig.from_env(data_dir=data_dir, host="127.0.0.1", port=0))
        await emulator.start()
        url = emulator.url
        log.info("embedded_emulator_started", url=url)
    elif backend is KvsBackend.ENDPOINT:
        url = settings.kvs_endpoint_url
        log.info("kvs_backend", backend="endpoint", url=url)
    else:
        log.info("kvs_backend", backend="aws")
    kvs = make_kvs(settings, endpoint_url=url)
    try:
        if hasattr(kvs, "__aenter__"):
            async with kvs as entered:
                await entered.warm_up()
                yield Backend(entered, emulator, url)
        else:
            yield Backend(kvs, emulator, url)
    finally:
        close = getattr(kvs, "close", None)
        if close is not None and not hasattr(kvs, "__aenter__"):
            with contextlib.suppress(Exception):
                result = close()
                if asyncio.iscoroutine(result):
                    await result
        if emulator is not None:
            await emulator.stop()


async def serve(settings: Settings, shutdown: asyncio.Event | None = None) -> int:
    """The whole service; returns the exit status (0 after a drain)."""
    from kvs_ingest.server.app import IngestServer
    from kvs_ingest.sessions import SessionRegistry

    shutdown = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, _on_signal, sig, shutdown)
    async with open_backend(settings) as backend:
        if settings.auth_mode is AuthMode.NONE:
            log.warning(
                "auth_disabled",
                note="KVS_INGEST_AUTH_MODE=none: anyone can speak into any session; local use only",
            )
        registry = SessionRegistry(settings, backend.kvs)
        server = IngestServer(settings, registry)
        _freeze_startup_objects()
        await server.start()
        await server.run(shutdown.wait())
        closer = getattr(server.verifier, "close", None)
        if closer is not None:
            await closer()
    log.info("stopped")
    return 0


def _freeze_startup_objects() -> None:
    """Take what start-up built out of the cyclic garbage collector's reach.

    Modules, botocore's service models and the codec tables are ~110 000 objects that live
    as long as the process. A full (generation 2) collection walks every one of them, with
    the GIL held: 60-80 ms with the event loop stopped (once in most 3-second runs of the
    loop-lag scenario, tests/reliability).
    Frozen (gc.freeze, Python >= 3.7) they are never walked again; a full collection then
    costs what serving allocated. Collected first, so start-up's garbage is not kept.
    """
    gc.collect()
    gc.freeze()
    log.debug("gc_frozen", objects=gc.get_freeze_count())


def _on_signal(sig: signal.Signals, shutdown: asyncio.Event) -> None:
    if shutdown.is_set():
        log.warning("signal_again", signal=sig.name, note="already draining")
        return
    log.info("signal", signal=sig.name, note="draining")
    shutdown.set()
