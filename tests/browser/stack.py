"""The service under test for the browser suite: `kvs-ingest serve` as a real subprocess on the
embedded emulator with the demo page, plus the `token` and `fetch` commands run the way a person
would run them. Also a loopback TCP proxy that can cut every connection (a network drop)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import wave
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from tests.jsonlog import follow_json_log

TIME_FACTOR = float(os.environ.get("KVS_INGEST_TEST_TIME_FACTOR", "1"))
CMD = [sys.executable, "-m", "kvs_ingest"]
AUTH_SECRET = "browser-suite-secret-0123456789abcdef"  # test-only, never a real secret


def t(seconds: float) -> float:
    """A timeout scaled for slow machines (KVS_INGEST_TEST_TIME_FACTOR)."""
    return seconds * TIME_FACTOR


def service_env(**extra: str) -> dict[str, str]:
    """Our environment without any KVS/AWS settings (so serve embeds the emulator), plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVS_INGEST_", "AWS_"))}
    env.update(
        KVS_INGEST_LOG_FORMAT="json",
        KVS_INGEST_AUTH_MODE="hs256",
        KVS_INGEST_AUTH_SECRET=AUTH_SECRET,
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Service:
    """A running `kvs-ingest serve`: its port, its embedded emulator's URL, its log lines."""

    proc: asyncio.subprocess.Process
    data_dir: Path
    port: int = 0
    emulator_url: str = ""
    lines: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    tls: bool = False

    def trouble(self) -> list[dict[str, Any]]:
        """The warnings and errors it logged (for failure messages)."""
        return [line for line in self.lines if line.get("level") in ("warning", "error")]

    @property
    def http(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), t(60))
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        if self.reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reader, t(10))
        return code


async def start_service(
    data_dir: Path, *, kvs_endpoint: str | None = None, tls: tuple[Path, Path] | None = None
) -> Service:
    """`kvs-ingest serve` on a free loopback port with DEMO_PAGE=1 and the embedded emulator
    (or, with `kvs_endpoint`, another service's emulator, as a second task of a fleet would);
    returns once it listens and /healthz answers 200. `tls` = (cert, key) serves HTTPS/WSS."""
    env = service_env(
        KVS_INGEST_DEMO_PAGE="1",
        KVS_INGEST_EMBEDDED_DATA_DIR=str(data_dir),
        KVS_INGEST_HOST="127.0.0.1",
        KVS_INGEST_PORT="0",
        KVS_INGEST_SESSION_GRACE_SECONDS="5",
    )
    if kvs_endpoint is not None:
        env.update(
            KVS_INGEST_KVS_BACKEND="endpoint",
            KVS_INGEST_KVS_ENDPOINT_URL=kvs_endpoint,
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION="us-east-1",
        )
    if tls is not None:
        env.update(KVS_INGEST_TLS_CERT_FILE=str(tls[0]), KVS_INGEST_TLS_KEY_FILE=str(tls[1]))
    proc = await asyncio.create_subprocess_exec(
        *CMD, "serve", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    service = Service(proc, data_dir, emulator_url=kvs_endpoint or "", tls=tls is not None)

    def on_line(line: dict[str, Any]) -> None:
        if line.get("event") == "embedded_emulator_started":
            service.emulator_url = str(line["url"])

    assert proc.stderr is not None
    service.reader, listening = follow_json_log(proc.stderr, service.lines, on_line)
    try:
        service.port = await asyncio.wait_for(listening, t(60))
        await wait_healthy(service.port, tls=service.tls)
    except BaseException:
        await service.stop()
        raise
    assert service.emulator_url, "serve did not log its embedded emulator's URL"
    return service


async def wait_healthy(port: int, *, tls: bool = False) -> None:
    """Poll GET /healthz until 200 (plain asyncio streams: no client library in the way)."""
    deadline = asyncio.get_running_loop().time() + t(30)
    context = None
    if tls:  # a self-signed test certificate
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        except OSError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("/healthz never answered 200")
        await asyncio.sleep(0.1)


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CMD,
        *args,
        env=env or service_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), t(120))
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def token(session: str) -> str:
    """A speaker token from `kvs-ingest token` (HS256 with the service's secret)."""
    code, out, err = await run_cli("token", "--session", session)
    assert code == 0, err
    return out.strip()


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (openssl), for the HTTPS/WSS page test."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Fetched:
    """A session's audio as `kvs-ingest fetch` read it back from the emulator."""

    samples: np.ndarray  # float64 in [-1, 1), 16 kHz mono
    gaps_ms: list[float]
    fragments: int
    start_ms: int  # producer time of the first fragment (epoch ms)
    overlaps: int  # fragments that started before the previous one ended
    stdout: str

    @property
    def seconds(self) -> float:
        return len(self.samples) / 16000


async def fetch(service: Service, session: str, out: Path, *, fill_gaps: bool = False) -> Fetched:
    """Run `kvs-ingest fetch` against the service's emulator and read the WAV it wrote."""
    args = ["fetch", "--session", session, "-o", str(out), "--endpoint-url", service.emulator_url]
    if fill_gaps:
        args.append("--fill-gaps")
    code, stdout, stderr = await run_cli(*args)
    assert code == 0, f"fetch failed ({code}): {stderr}"
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768
    gaps = [float(m) for m in re.findall(r"^gap of ([0-9.]+) ms", stdout, re.M)]
    summary = re.search(r"^(\d+) fragments, [0-9.]+ s of audio from (\S+)", stdout, re.M)
    assert summary is not None, stdout
    start = datetime.fromisoformat(summary.group(2))
    overlaps = len(re.findall(r"^overlap of", stdout, re.M))
    return Fetched(
        pcm, gaps, int(summary.group(1)), int(start.timestamp() * 1000), overlaps, stdout
    )


class DropProxy:
    """A loopback TCP proxy in front of the service. `drop()` aborts every connection open
    through it, as a network failure would: the browser sees close code 1006. New connections
    go to `target_port`, which a test may change (a load balancer moving to another task)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def drop(self) -> int:
        """Abort every open connection (RST, no close handshake); returns how many."""
        writers = list(self._writers)
        for writer in writers:
            writer.transport.abort()
        self._writers.clear()
        return len(writers)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
