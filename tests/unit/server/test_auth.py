"""Token verification: HS256 and JWKS (RS256/ES256 from a real HTTP server), claims, carriers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from kvs_ingest.server.auth import (
    AuthUnavailable,
    Hs256Verifier,
    JwksVerifier,
    find_token,
    mint_token,
)
from kvs_ingest.server.errors import CloseCode, PeerError

SECRET = "0123456789abcdef0123456789abcdef"


async def refused(verifier: object, token: str | None, session: str) -> PeerError:
    with pytest.raises(PeerError) as info:
        await verifier.verify(token, session)  # type: ignore[attr-defined]
    return info.value


async def test_hs256_accepts_a_minted_token() -> None:
    """A token from mint_token verifies for its own session."""
    v = Hs256Verifier(SECRET, audience=None, issuer=None)
    ident = await v.verify(mint_token(SECRET, "s1"), "s1")
    assert ident.session_id == "s1"


@pytest.mark.parametrize(
    ("token", "code", "reason"),
    [
        (None, 4401, "missing"),
        (mint_token(SECRET, "s1", now=time.time() - 7200, ttl=60), 4401, "expired"),
        (mint_token("another-secret-another-secret-xx", "s1"), 4401, "bad_signature"),
        ("not.a.jwt", 4401, "invalid"),
        (mint_token(SECRET, "s2"), 4403, "wrong_session"),
        (mint_token(SECRET, "s1", role="listener"), 4403, "wrong_role"),
        (jwt.encode({"session": "s1", "role": "speaker"}, SECRET), 4401, "no_expiry"),
        (
            jwt.encode({"session": "s1", "role": "speaker", "exp": 9e9}, SECRET, "HS384"),
            4401,
            "invalid",
        ),
    ],
)
async def test_hs256_refusals(token: str | None, code: int, reason: str) -> None:
    """Each bad token is refused with the table's close code and a metrics reason."""
    err = await refused(Hs256Verifier(SECRET, audience=None, issuer=None), token, "s1")
    assert (int(err.code), err.reason) == (code, reason)


async def test_hs256_checks_audience_and_issuer_when_configured() -> None:
    """With JWT_AUDIENCE/JWT_ISSUER set, tokens for another audience are refused."""
    v = Hs256Verifier(SECRET, audience="kvs", issuer="me")
    assert (
        await v.verify(mint_token(SECRET, "s", audience="kvs", issuer="me"), "s")
    ).session_id == "s"
    err = await refused(v, mint_token(SECRET, "s", audience="other", issuer="me"), "s")
    assert err.code == CloseCode.UNAUTHORIZED


def test_roles_list_grants_the_role() -> None:
    """A `roles` list holding `speaker` is as good as `role: speaker`."""
    from kvs_ingest.server.auth import check_claims

    assert check_claims({"session": "a", "roles": ["x", "speaker"]}, "a").session_id == "a"


def test_token_carriers_in_order() -> None:
    """Subprotocol bearer beats Authorization beats ?token=."""
    t = find_token("/p?token=q", {"Authorization": "Bearer h"}, ["kvs-ingest.v1", "bearer.s"])
    assert (t.token, t.via) == ("s", "subprotocol")  # type: ignore[union-attr]
    t = find_token("/p?token=q", {"Authorization": "Bearer h"}, ["kvs-ingest.v1"])
    assert (t.token, t.via) == ("h", "authorization")  # type: ignore[union-attr]
    t = find_token("/p?token=q", {}, [])
    assert (t.token, t.via) == ("q", "query")  # type: ignore[union-attr]
    assert find_token("/p", {"Authorization": "Basic abc"}, []) is None


class JwksServer:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.keys = [("rsa1", self.rsa, "RS256"), ("ec1", self.ec, "ES256")]
        self.hits = 0
        self.fail = False

    def jwks(self) -> dict[str, object]:
        out = []
        for kid, key, alg in self.keys:
            algo = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
            jwk = json.loads(algo.to_jwk(key.public_key()))
            jwk.update(kid=kid, alg=alg, use="sig")
            out.append(jwk)
        return {"keys": out}

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.fail:
            return web.Response(status=503)
        return web.json_response(self.jwks())

    def token(self, kid: str, claims: dict[str, object]) -> str:
        for k, key, alg in self.keys:
            if k == kid:
                return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
        raise KeyError(kid)


@pytest.fixture
async def jwks_server() -> AsyncIterator[tuple[JwksServer, str]]:
    srv = JwksServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", srv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield srv, f"http://127.0.0.1:{port}/.well-known/jwks.json"
    await runner.cleanup()


def claims(session: str = "s1", **extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "session": session,
        "role": "speaker",
        "exp": int(time.time()) + 600,
        "aud": "kvs-ingest",
        "iss": "https://idp.example",
    }
    base.update(extra)
    return base


async def test_jwks_rs256_and_es256_verify_with_one_fetch(
    jwks_server: tuple[JwksServer, str],
) -> None:
    """RS256 and ES256 tokens verify against the published keys, fetched once and cached."""
    srv, url = jwks_server
    v = JwksVerifier(url, audience="kvs-ingest", issuer="https://idp.example")
    try:
        assert (await v.verify(srv.token("rsa1", claims()), "s1")).session_id == "s1"
        assert (await v.verify(srv.token("ec1", claims()), "s1")).session_id == "s1"
        assert srv.hits == 1
        err = await refused(v, srv.token("rsa1", claims(aud="someone-else")), "s1")
        assert err.reason == "wrong_audience"
        err = await refused(v, srv.token("ec1", claims(iss="https://evil.example")), "s1")
        assert err.reason == "wrong_audience"
        err = await refused(v, srv.token("rsa1", claims("s2")), "s1")
        assert err.code == CloseCode.FORBIDDEN
    finally:
        await v.close()


async def test_jwks_unknown_kid_refetches_once_then_refuses(
    jwks_server: tuple[JwksServer, str],
) -> None:
    """A rotated-in key is picked up by a refetch; a forged kid is refused (4401)."""
    srv, url = jwks_server
    clock = [1000.0]
    v = JwksVerifier(
        url, audience="kvs-ingest", issuer="https://idp.example", clock=lambda: clock[0]
    )
    try:
        await v.verify(srv.token("rsa1", claims()), "s1")
        srv.keys.append(
            ("rsa2", rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")
        )
        clock[0] += 31
        assert (await v.verify(srv.token("rsa2", claims()), "s1")).session_id == "s1"
        assert srv.hits == 2
        forged = jwt.encode(
            claims(),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
            algorithm="RS256",
            headers={"kid": "nope"},
        )
        err = await refused(v, forged, "s1")
        assert err.code == CloseCode.UNAUTHORIZED
        assert srv.hits == 2  # within the minimum refresh interval: no new fetch
    finally:
        await v.close()


async def test_jwks_down_is_a_server_error(jwks_server: tuple[JwksServer, str]) -> None:
    """With no keys and the JWKS endpoint failing, the refusal is 1011, not the token's fault."""
    srv, url = jwks_server
    srv.fail = True
    v = JwksVerifier(url, audience=None, issuer=None)
    try:
        err = await refused(v, srv.token("rsa1", claims()), "s1")
        assert isinstance(err, AuthUnavailable)
        assert err.code == CloseCode.INTERNAL_ERROR
    finally:
        await v.close()


async def test_jwks_refuses_hs256_tokens(jwks_server: tuple[JwksServer, str]) -> None:
    """A symmetric token cannot pass as an asymmetric one (algorithm confusion)."""
    _, url = jwks_server
    v = JwksVerifier(url, audience=None, issuer=None)
    try:
        err = await refused(v, mint_token(SECRET, "s1"), "s1")
        assert err.code == CloseCode.UNAUTHORIZED
    finally:
        await v.close()
