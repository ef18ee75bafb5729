"""The image built from the real Dockerfile: non-root, read-only-safe, init as PID 1, health
check without curl, and a size we publish in the README."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.container.conftest import SCRIPTS, container_logs, docker, scaled

# The first test also pays for the engine, the base image and the build on a fresh machine.
pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

MAX_IMAGE_MB = 420  # measured 377 MB (python slim stand-in 145 MB; av+libs 104, numpy 63, botocore)


@pytest.fixture(scope="module")
def config(image: str) -> dict[str, Any]:
    inspected = json.loads(docker("image", "inspect", image))
    config: dict[str, Any] = inspected[0]["Config"]
    config["_size"] = inspected[0]["Size"]
    return config


def test_image_runs_as_non_root_with_init_and_serve_default(config: dict[str, Any]) -> None:
    """USER is numeric non-root; tini is the entry point; `serve` is the default command."""
    user, _, group = config["User"].partition(":")
    assert int(user) >= 1000 and int(group) >= 1000
    assert config["Entrypoint"] == ["/usr/local/bin/tini", "--", "kvs-ingest"]
    assert config["Cmd"] == ["serve"]
    assert "8080/tcp" in config["ExposedPorts"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"


def test_health_check_uses_python_not_curl(image: str, config: dict[str, Any]) -> None:
    """The HEALTHCHECK probes with the image's Python; there is no curl or wget to call."""
    test = config["Healthcheck"]["Test"]
    assert test == ["CMD", "python", "/usr/local/bin/kvs-ingest-healthcheck"]
    found = docker(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", image,
        "-c", "command -v curl wget || echo none",
    )  # fmt: skip
    assert found == "none"


def test_image_imports_everything_on_a_read_only_root(image: str) -> None:
    """With --read-only and no network, the service's modules and native wheels import."""
    out = docker(
        "run", "--rm", "--read-only", "--network", "none", "--entrypoint", "python", image,
        "-c", "import av, numpy, uvloop, kvs_ingest.server.app, kvs_ingest.sessions; "
        "import os; print(os.getuid(), av.__version__)",
    )  # fmt: skip
    uid, _, av_version = out.partition(" ")
    assert uid == "10001"
    assert av_version.startswith("1")


def test_image_size_is_within_budget(config: dict[str, Any]) -> None:
    """The image stays near what its dependencies weigh (the number goes in the README)."""
    size_mb = config["_size"] / 1e6
    print(f"image size: {size_mb:.0f} MB")
    assert size_mb < MAX_IMAGE_MB


def test_pid1_tini_forwards_sigterm_and_passes_the_exit_status(image: str) -> None:
    """tini as PID 1 hands SIGTERM to the child, which handles it; the container exits with its status."""
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(7)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    name = f"kvs-tini-{threading.get_ident()}"
    docker(
        "run", "-d", "--name", name, "--read-only", "--network", "none",
        "--entrypoint", "/usr/local/bin/tini", image, "--", "python", "-c", script,
    )  # fmt: skip
    try:
        _wait_for_line(name, "ready")
        docker("stop", "--time", "20", name, timeout=60)
        state = json.loads(docker("inspect", name))[0]["State"]
        assert state["ExitCode"] == 7
        assert "got SIGTERM" in docker("logs", name)
    finally:
        docker("rm", "-f", name, check=False)


def _wait_for_line(container: str, line: str) -> None:
    for _ in range(int(scaled(60) * 10)):
        if line in docker("logs", container).splitlines():
            return
        threading.Event().wait(0.1)
    raise AssertionError(f"{container} never printed {line!r}")


class _Probe(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def probe_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Probe)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _healthcheck(env: dict[str, str]) -> int:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / "healthcheck.py")],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        timeout=scaled(30),
    ).returncode


def test_healthcheck_script_follows_the_service_port(
    probe_server: http.server.HTTPServer,
) -> None:
    """The probe reads KVS_INGEST_PORT: 0 on a 200 from /healthz, 1 on 503 or nobody there."""
    port = str(probe_server.server_address[1])
    assert _healthcheck({"KVS_INGEST_PORT": port}) == 0
    _Probe.status = 503
    try:
        assert _healthcheck({"KVS_INGEST_PORT": port}) == 1
    finally:
        _Probe.status = 200
    probe_server.shutdown()
    probe_server.server_close()
    assert _healthcheck({"KVS_INGEST_PORT": port}) == 1


def test_image_alone_serves_healthy_on_a_read_only_root_and_stops_cleanly(image: str) -> None:
    """`docker run --read-only IMAGE` (embedded KVS in /data): Docker's HEALTHCHECK turns healthy,
    and `docker stop` ends it with exit 0 through the drain."""
    name = f"kvs-alone-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "--network", "none",
           "--health-interval", "1s", "--health-start-period", "60s", image)  # fmt: skip
    try:
        deadline = time.monotonic() + scaled(90)
        status = ""
        while status != "healthy":
            state = json.loads(docker("inspect", name))[0]["State"]
            status = state.get("Health", {}).get("Status", "")
            assert state["Running"], container_logs(name)
            assert time.monotonic() < deadline, f"health {status}: " + container_logs(name)
            time.sleep(0.5)
        docker("stop", "--time", "30", name, timeout=60)
        state = json.loads(docker("inspect", name))[0]["State"]
        logs = container_logs(name)
        assert state["ExitCode"] == 0, logs
        assert '"event": "drained"' in logs and '"backend": "embedded"' in logs, logs
    finally:
        docker("rm", "-f", "-v", name, check=False)
