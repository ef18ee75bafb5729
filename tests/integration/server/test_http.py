"""HTTP on the service port: probes, metrics, the demo page, 426 and 404 (DESIGN.md §4.3)."""

from __future__ import annotations

import json
from pathlib import Path

from kvs_ingest.server import http as web

from .conftest import NoSessions, http_get, running_server


async def test_healthz_is_ok_even_when_kvs_is_down() -> None:
    """Liveness never depends on KVS."""
    registry = NoSessions()
    registry.healthy = False
    async with running_server(registry) as srv:
        status, body, _ = await http_get(srv.http + "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "ok"})


async def test_readyz_reasons() -> None:
    """/readyz is 200 when ready, 503 kvs_unavailable when the control plane fails, 503 draining."""
    registry = NoSessions()
    async with running_server(registry) as srv:
        status, body, _ = await http_get(srv.http + "/readyz")
        assert (status, json.loads(body)["status"]) == (200, "ready")
        registry.healthy = False
        status, body, _ = await http_get(srv.http + "/readyz")
        assert (status, json.loads(body)["reason"]) == (503, "kvs_unavailable")
        registry.healthy = True
        await srv.server.drain()
        status, body, _ = await http_get(srv.http + "/readyz")
        assert (status, json.loads(body)["reason"]) == (503, "draining")
        status, _, _ = await http_get(srv.http + "/healthz")
        assert status == 200


async def test_metrics_is_prometheus_text() -> None:
    """/metrics serves the Prometheus exposition with our metric families."""
    async with running_server(NoSessions()) as srv:
        status, body, headers = await http_get(srv.http + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    for name in (
        "kvs_ingest_connections_open",
        "kvs_ingest_audio_in_seconds_total",
        "kvs_ingest_chunk_persisted_latency_seconds_bucket",
        "kvs_ingest_auth_failures_total",
    ):
        assert name in body


async def test_plain_http_on_the_websocket_path_is_426_and_unknown_is_404() -> None:
    """A GET without Upgrade on the speaker path gets 426; other paths 404."""
    async with running_server(NoSessions()) as srv:
        status, _, headers = await http_get(srv.http + "/v1/sessions/abc/speaker")
        assert status == 426
        assert headers.get("Upgrade") == "websocket"
        status, _, _ = await http_get(srv.http + "/nope")
        assert status == 404
        status, _, _ = await http_get(srv.http + "/")
        assert status == 404  # demo page off by default


async def test_demo_page_serves_every_file_of_its_folder(tmp_path: Path) -> None:
    """With DEMO_PAGE on, / is index.html and /static/<name> any file of the folder."""
    (tmp_path / "index.html").write_text("<!doctype html><title>speak</title>")
    (tmp_path / "speaker.js").write_text("export const x = 1;")
    files = web.load_static(tmp_path)
    async with running_server(NoSessions(), demo_page=True, static_files=files) as srv:
        status, body, headers = await http_get(srv.http + "/")
        assert status == 200 and "<title>speak</title>" in body
        assert headers["Content-Type"].startswith("text/html")
        status, body, headers = await http_get(srv.http + "/static/speaker.js")
        assert status == 200 and "export const" in body
        assert "javascript" in headers["Content-Type"]
        status, _, _ = await http_get(srv.http + "/static/..%2Fconftest.py")
        assert status == 404


async def test_demo_page_folder_in_the_package_is_served_when_on() -> None:
    """`make run`'s demo page: every file in server/static/ is reachable."""
    files = web.load_static()
    async with running_server(NoSessions(), demo_page=True) as srv:
        for name in files:
            status, _, _ = await http_get(f"{srv.http}/static/{name}")
            assert status == 200
