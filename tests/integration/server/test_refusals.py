"""Refusals before any media is read: tokens, origin, bad requests, draining (DESIGN.md §4.4).

Each test connects for real, sends media at once, and checks the JSON `error` and the close code
the client saw, and that the server read no media and opened no session.
"""

from __future__ import annotations

import contextlib
import time

import jwt
import pytest
from websockets.exceptions import ConnectionClosed

from kvs_ingest.server import metrics
from kvs_ingest.server.auth import mint_token

from .conftest import SECRET, NoSessions, read_until_closed, running_server, speaker

HS256 = {"auth_mode": "hs256", "auth_secret": SECRET}


def bytes_in() -> float:
    return metrics.BYTES_IN._value.get()


def failures(reason: str) -> float:
    return metrics.AUTH_FAILURES.labels(reason)._value.get()


async def refused_with(url: str, token: str | None, **kwargs: object) -> tuple[int | None, dict]:
    before = bytes_in()
    async with speaker(url, token, **kwargs) as ws:
        with contextlib.suppress(ConnectionClosed):  # the server may have closed already
            await ws.send(b"\x1a\x45\xdf\xa3" + b"\0" * 1000)  # media it must not read
        ending = await read_until_closed(ws)
    assert bytes_in() == before
    assert len(ending.errors) == 1, ending.messages
    assert ending.messages == ending.errors  # no ready, no ack
    return ending.code, ending.errors[0]


@pytest.mark.parametrize(
    ("make_token", "code", "reason"),
    [
        (lambda: None, 4401, "missing"),
        (lambda: mint_token(SECRET, "s1", now=time.time() - 3600, ttl=60), 4401, "expired"),
        (lambda: mint_token("x" * 40, "s1"), 4401, "bad_signature"),
        (lambda: mint_token(SECRET, "another"), 4403, "wrong_session"),
        (lambda: mint_token(SECRET, "s1", role="listener"), 4403, "wrong_role"),
        (lambda: jwt.encode({"session": "s1", "role": "speaker"}, SECRET), 4401, "no_expiry"),
    ],
)
async def test_bad_tokens_are_refused_before_media(make_token, code: int, reason: str) -> None:
    """Missing, expired, forged, wrong-session and wrong-role tokens close with 4401/4403."""
    registry = NoSessions()
    async with running_server(registry, **HS256) as srv:
        before = failures(reason)
        got, error = await refused_with(srv.ws_url("s1"), make_token())
    assert (got, error["code"]) == (code, code)
    assert failures(reason) == before + 1
    assert registry.opened == []


async def test_foreign_origin_is_4403() -> None:
    """A browser Origin not in ALLOWED_ORIGINS is refused with 4403 even with a good token."""
    registry = NoSessions()
    async with running_server(registry, allowed_origins="https://app.example", **HS256) as srv:
        code, error = await refused_with(
            srv.ws_url("s1"), mint_token(SECRET, "s1"), origin="https://evil.example"
        )
    assert code == 4403 and "origin" in error["message"]
    assert registry.opened == []


async def test_token_in_authorization_header_and_query_pass_auth() -> None:
    """Authorization: Bearer and ?token= are accepted carriers (auth passes, then the session)."""
    registry = NoSessions()
    async with running_server(registry, **HS256) as srv:
        token = mint_token(SECRET, "s1")
        async with speaker(
            srv.ws_url("s1"), None, additional_headers={"Authorization": f"Bearer {token}"}
        ) as ws:
            await read_until_closed(ws)
        async with speaker(srv.ws_url("s1", f"token={token}"), None) as ws:
            await read_until_closed(ws)
    assert registry.opened == ["s1", "s1"]


async def test_subprotocol_is_selected_and_the_token_never_echoed() -> None:
    """The server answers `kvs-ingest.v1` and never sends the bearer entry back."""
    async with running_server(NoSessions()) as srv:
        async with speaker(srv.ws_url("s1"), "secret-token-value") as ws:
            assert ws.subprotocol == "kvs-ingest.v1"
            assert "secret-token-value" not in str(ws.response.headers)
            await read_until_closed(ws)


@pytest.mark.parametrize(
    ("path_session", "query", "code"),
    [("bad!id", "", 4400), ("s1", "format=flac", 4415), ("s1", "format=webm&rate=8000", 4400)],
)
async def test_bad_requests_are_refused(path_session: str, query: str, code: int) -> None:
    """A bad session id or parameters is 4400, an unsupported format 4415, before media."""
    registry = NoSessions()
    async with running_server(registry) as srv:
        got, error = await refused_with(srv.ws_url(path_session, query), None)
    assert (got, error["code"]) == (code, code)
    assert registry.opened == []


async def test_new_sockets_while_draining_get_1012() -> None:
    """After the drain started, a new speaker is told to reconnect elsewhere (1012)."""
    registry = NoSessions()
    async with running_server(registry) as srv:
        await srv.server.drain()
        code, error = await refused_with(srv.ws_url("s1"), None)
    assert code == 1012 and error["code"] == 1012
    assert registry.opened == []
