"""`kvs-ingest emulator`: the local KVS emulator alone, until SIGINT/SIGTERM.

Flags override `KVS_EMULATOR_*` variables; credentials are the AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY of the environment (`test`/`test` when unset).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path

from kvs_ingest.emulator.app import Emulator
from kvs_ingest.emulator.config import EmulatorConfig
from kvs_ingest.logging import configure_logging, get_logger

log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default 4567)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="where streams and fragments persist"
    )
    parser.add_argument(
        "--advertised-url",
        default=None,
        help="URL GetDataEndpoint returns (e.g. http://kvs-emulator:4567 on a Docker network)",
    )
    parser.add_argument(
        "--region", default=None, help="region in ARNs and signatures (default us-east-1)"
    )
    parser.add_argument(
        "--active-delay", type=float, default=None, help="seconds a new stream stays CREATING"
    )
    parser.add_argument(
        "--max-connection-seconds",
        type=float,
        default=None,
        help="PutMedia connection limit, then error 4003 (default 2400)",
    )
    parser.add_argument(
        "--min-fragment-ms", type=int, default=None, help="shortest fragment accepted (0: any)"
    )
    parser.add_argument(
        "--get-media-idle", type=float, default=None, help="GetMedia ends after this idle time"
    )
    parser.add_argument(
        "--log-level", default=os.environ.get("KVS_INGEST_LOG_LEVEL", "INFO"), help="log level"
    )


def run(args: argparse.Namespace) -> int:
    configure_logging(str(args.log_level).upper(), os.environ.get("KVS_INGEST_LOG_FORMAT", "auto"))
    try:
        config = EmulatorConfig.from_env(
            host=args.host,
            port=args.port if args.port is not None else _env_port(),
            data_dir=args.data_dir,
            advertised_url=args.advertised_url,
            region=args.region,
            active_delay_seconds=args.active_delay,
            max_connection_seconds=args.max_connection_seconds,
            min_fragment_ms=args.min_fragment_ms,
            get_media_idle_seconds=args.get_media_idle,
        )
    except (TypeError, ValueError) as exc:
        print(f"kvs-ingest emulator: {exc}")
        return 2
    asyncio.run(_serve(config))
    return 0


def _env_port() -> int:
    return int(os.environ.get("KVS_EMULATOR_PORT", "4567"))


async def _serve(config: EmulatorConfig) -> None:
    emulator = Emulator(config)
    await emulator.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    log.info(
        "emulator_ready",
        url=emulator.url,
        data_endpoint=emulator.data_endpoint(),
        data_dir=str(config.data_dir),
        region=config.region,
    )
    try:
        await stop.wait()
    finally:
        await emulator.stop()
        log.info("emulator_stopped")
