"""`kvs-ingest token` as a subprocess, its output checked with PyJWT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import jwt

SECRET = "cli-secret-cli-secret-cli-secret-0123456789"


def token_cmd(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KVS_INGEST_")}
    return subprocess.run(
        [sys.executable, "-m", "kvs_ingest", "token", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_is_an_hs256_speaker_token_for_the_session() -> None:
    """The printed token verifies with AUTH_SECRET and names the session, role and expiry."""
    done = token_cmd("--session", "room-7", "--ttl", "120", KVS_INGEST_AUTH_SECRET=SECRET)
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["session"] == "room-7" and claims["role"] == "speaker"
    assert abs(claims["exp"] - (time.time() + 120)) < 30
    assert SECRET not in done.stdout + done.stderr


def test_token_carries_audience_and_issuer_when_configured() -> None:
    """JWT_AUDIENCE and JWT_ISSUER end up in the token, so the server's check passes."""
    done = token_cmd(
        "--session", "s", "--json",
        KVS_INGEST_AUTH_SECRET=SECRET, KVS_INGEST_JWT_AUDIENCE="kvs", KVS_INGEST_JWT_ISSUER="me",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    claims = jwt.decode(out["token"], SECRET, algorithms=["HS256"], audience="kvs", issuer="me")
    assert claims["exp"] == out["expires_at"]


def test_token_without_a_secret_fails_clearly() -> None:
    """With no AUTH_SECRET the command exits 2 and names the variable."""
    done = token_cmd("--session", "s")
    assert done.returncode == 2
    assert "KVS_INGEST_AUTH_SECRET" in done.stderr
    assert done.stdout == ""
