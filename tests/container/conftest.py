"""Fixtures for the container suite: a Docker engine, the base image, the built image, and a
compose stack of the shipped docker-compose.yml (kvs emulator + ingest service).

Nothing here is mocked: scripts/docker/engine.sh starts a real engine when none answers,
base-image.sh builds the python:3.11-slim stand-in when no registry is reachable, build.sh runs
BuildKit on the real Dockerfile. If the engine cannot run, the tests fail and say why; they are
never skipped. Timeouts scale with KVS_INGEST_TEST_TIME_FACTOR.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "docker"
TIME_FACTOR = float(os.environ.get("KVS_INGEST_TEST_TIME_FACTOR", "1"))
IMAGE = os.environ.get("KVS_INGEST_TEST_IMAGE", "kvs-ingest:test")
DRAIN_SECONDS = 20
PROJECT_PREFIX = "kvsingesttest"


def scaled(seconds: float) -> float:
    return seconds * TIME_FACTOR


def sh(
    *args: str,
    timeout: float = 120,
    check: bool = True,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command; on failure the assertion message carries its output."""
    result = subprocess.run(
        args,
        capture_output=True,
        timeout=scaled(timeout),
        env={**os.environ, **(env or {})},
        input=input,
        cwd=REPO,
    )
    if check:
        assert result.returncode == 0, (
            f"{' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout.decode(errors='replace')[-4000:]}\n"
            f"stderr:\n{result.stderr.decode(errors='replace')[-4000:]}"
        )
    return result


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    return sh("docker", *args, timeout=timeout, check=check).stdout.decode().strip()


def container_logs(container: str) -> str:
    """A container's stdout and stderr (the service logs JSON lines to stderr)."""
    result = sh("docker", "logs", container, check=False)
    return result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")


@pytest.fixture(scope="session")
def engine() -> str:
    """A Docker engine that answers (started here when none does); its version line."""
    result = sh(str(SCRIPTS / "engine.sh"), timeout=600, check=False)
    assert result.returncode == 0, (
        "no Docker engine could be started here; the container suite cannot run.\n"
        + result.stderr.decode(errors="replace")[-4000:]
    )
    return result.stdout.decode().strip()


@pytest.fixture(scope="session")
def image(engine: str) -> str:
    """The real Dockerfile built with BuildKit (base image stand-in built first if needed)."""
    sh(str(SCRIPTS / "build.sh"), IMAGE, timeout=900)
    return IMAGE


@dataclass
class Stack:
    """A running `docker-compose` project of the shipped docker-compose.yml."""

    project: str
    env: dict[str, str]

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        command = ("docker-compose", "-p", self.project, "-f", "docker-compose.yml", *args)
        return sh(*command, timeout=timeout, check=check, env=self.env).stdout.decode().strip()

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service)

    def state(self, service: str) -> dict[str, object]:
        inspected = json.loads(docker("inspect", self.container(service)))
        state: dict[str, object] = inspected[0]["State"]
        return state

    def health(self, service: str) -> str:
        health = self.state(service).get("Health") or {}
        assert isinstance(health, dict)
        return str(health.get("Status", "none"))

    def wait_healthy(self, *services: str, timeout: float) -> dict[str, float]:
        """Seconds until each service's Docker health check said healthy."""
        started = time.monotonic()
        became: dict[str, float] = {}
        deadline = started + scaled(timeout)
        while len(became) < len(services):
            for service in services:
                if service in became:
                    continue
                status = self.health(service)
                if status == "healthy":
                    became[service] = round(time.monotonic() - started, 2)
                assert self.state(service)["Running"], self.logs(service)[-4000:]
            assert time.monotonic() < deadline, (
                f"not healthy after {timeout}s: "
                + ", ".join(f"{s}={self.health(s)}" for s in services)
                + "\n"
                + self.logs(*services)[-6000:]
            )
            time.sleep(0.5)
        return became

    def published(self, service: str, port: int) -> tuple[str, int]:
        host, _, number = self.compose("port", service, str(port)).rpartition(":")
        return host, int(number)

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", *services, check=False)

    def raw_logs(self, service: str) -> list[str]:
        """The container's own output lines (JSON from the service), without compose's prefix."""
        return container_logs(self.container(service)).splitlines()


@pytest.fixture(scope="module")
def stack(image: str) -> Iterator[Stack]:
    """`docker-compose up -d` of the real compose file, port published on 127.0.0.1 only."""
    _remove_stale_projects()
    project = f"{PROJECT_PREFIX}{uuid.uuid4().hex[:8]}"
    env = {
        "KVS_INGEST_IMAGE": image,
        "KVS_INGEST_PUBLISH_ADDRESS": "127.0.0.1",
        "KVS_INGEST_PUBLISH_PORT": "",  # a free port, read back with `docker-compose port`
        "KVS_INGEST_DRAIN_TIMEOUT_SECONDS": str(DRAIN_SECONDS),
        "COMPOSE_INTERACTIVE_NO_CLI": "1",
    }
    stack = Stack(project, env)
    try:
        stack.compose("up", "-d", "--no-build", timeout=300)
        yield stack
    finally:
        print(stack.logs()[-20000:])
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "5", timeout=300, check=False)


def _remove_stale_projects() -> None:
    """Containers, networks and volumes left by an earlier run that was killed mid-way."""
    label = "com.docker.compose.project"
    kinds = (
        ("container", ("ps", "-a"), ".ID", ("rm", "-f")),
        ("network", ("network", "ls"), ".ID", ("network", "rm")),
        ("volume", ("volume", "ls"), ".Name", ("volume", "rm", "-f")),
    )
    for _kind, listing, field, remove in kinds:
        template = f'{{{{{field}}}}} {{{{.Label "{label}"}}}}'
        rows = docker(*listing, "--filter", f"label={label}", "--format", template)
        stale = [
            row.split()[0]
            for row in rows.splitlines()
            if len(row.split()) == 2 and row.split()[1].startswith(PROJECT_PREFIX)
        ]
        if stale:
            docker(*remove, *stale, check=False)
