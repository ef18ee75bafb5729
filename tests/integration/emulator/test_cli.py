"""`kvs-ingest emulator` as a process: it serves boto3 and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from .kvsclient import client, scaled


async def test_emulator_command(tmp_path: Path) -> None:
    """The command serves boto3 with the environment's credentials, persists, exits 0 on SIGTERM."""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDCLI", "AWS_SECRET_ACCESS_KEY": "cli-secret",
           "KVS_INGEST_LOG_FORMAT": "json"}  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kvs_ingest", "emulator", "--port", "0",
        "--data-dir", str(tmp_path / "data"), "--active-delay", "0",
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        url = None
        async with asyncio.timeout(scaled(30)):
            while url is None:
                line = await proc.stderr.readline()
                assert line, "the emulator exited before it was ready"
                event = json.loads(line)
                if event.get("event") == "emulator_ready":
                    url = event["url"]
        kvs = client("kinesisvideo", url, key="AKIDCLI", secret="cli-secret")
        await asyncio.to_thread(kvs.create_stream, StreamName="cli")
        names = [
            s["StreamName"] for s in (await asyncio.to_thread(kvs.list_streams))["StreamInfoList"]
        ]
        assert names == ["cli"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), scaled(30))
    assert code == 0
    assert (tmp_path / "data" / "streams" / "cli" / "stream.json").is_file()
