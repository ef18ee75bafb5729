"""Speaker tokens: where they travel, how they are verified, and `kvs-ingest token`.

A speaker token is a JWT with the claims `session` (the session id it may speak into), `role`
(``speaker``, or a `roles` list holding it) and `exp`. Modes (`AUTH_MODE`): `hs256` verifies
with the shared `AUTH_SECRET`; `jwks` verifies RS256/ES256 with keys from `JWKS_URL` (cached,
audience and issuer checked when configured); `none` admits anyone (local runs only; `serve`
warns). Tokens are never logged: only the reason a token was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import jwt

from kvs_ingest.config import AuthMode, Settings, load_settings
from kvs_ingest.logging import get_logger
from kvs_ingest.server.errors import CloseCode, Forbidden, PeerError, Unauthorized
from kvs_ingest.server.protocol import BEARER_PREFIX, query_token

log = get_logger(__name__)

ROLE_SPEAKER = "speaker"
JWKS_CACHE_SECONDS = 300.0  # keys are re-read at most this often ...
JWKS_MIN_REFRESH_SECONDS = 30.0  # ... or on an unknown `kid`, but not more often than this
JWKS_FETCH_TIMEOUT_SECONDS = 5.0
LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class Identity:
    """Who a verified token says the speaker is."""

    session_id: str
    subject: str | None = None


@dataclass(frozen=True)
class FoundToken:
    """A token and where it came from (`subprotocol`, `authorization` or `query`)."""

    token: str
    via: str


def find_token(
    target: str, headers: Mapping[str, str], subprotocols: list[str]
) -> FoundToken | None:
    """The bearer token of a handshake, in the order DESIGN.md §4.4 lists the carriers."""
    for proto in subprotocols:
        if proto.startswith(BEARER_PREFIX) and len(proto) > len(BEARER_PREFIX):
            return FoundToken(proto[len(BEARER_PREFIX) :], "subprotocol")
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return FoundToken(value.strip(), "authorization")
    token = query_token(target)
    if token:
        return FoundToken(token, "query")
    return None


class AuthUnavailable(PeerError):
    """Tokens cannot be checked right now (the JWKS endpoint is down): a server problem."""

    code = CloseCode.INTERNAL_ERROR


class Verifier(Protocol):
    async def verify(self, token: str | None, session_id: str) -> Identity: ...


class NoAuth:
    """AUTH_MODE=none: every speaker may speak into the session its URL names."""

    async def verify(self, token: str | None, session_id: str) -> Identity:
        return Identity(session_id)


class _JwtVerifier:
    algorithms: tuple[str, ...] = ()

    def __init__(self, *, audience: str | None, issuer: str | None) -> None:
        self.audience = audience
        self.issuer = issuer

    async def _key(self, token: str) -> Any:
        raise NotImplementedError

    async def verify(self, token: str | None, session_id: str) -> Identity:
        if not token:
            raise Unauthorized("a bearer token is required", reason="missing")
        key = await self._key(token)
        claims = decode_claims(
            token,
            key,
            algorithms=list(self.algorithms),
            audience=self.audience,
            issuer=self.issuer,
        )
        return check_claims(claims, session_id)


def decode_claims(
    token: str,
    key: Any,
    *,
    algorithms: list[str],
    audience: str | None,
    issuer: str | None,
) -> dict[str, Any]:
    """Verify signature, expiry, audience and issuer; map PyJWT's errors to 4401 reasons."""
    options: Any = {"require": ["exp"], "verify_aud": audience is not None}
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options=options,
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired", reason="expired") from None
    except jwt.InvalidSignatureError:
        raise Unauthorized("token signature invalid", reason="bad_signature") from None
    except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
        raise Unauthorized("token not issued for this service", reason="wrong_audience") from None
    except jwt.MissingRequiredClaimError:
        raise Unauthorized("token must expire", reason="no_expiry") from None
    except jwt.PyJWTError:
        raise Unauthorized("token invalid", reason="invalid") from None
    return claims


def check_claims(claims: Mapping[str, Any], session_id: str) -> Identity:
    """The token must name this session and the speaker role (4403 otherwise)."""
    if claims.get("session") != session_id:
        raise Forbidden("token is not for this session", reason="wrong_session")
    role = claims.get("role")
    roles = claims.get("roles")
    has_role = role == ROLE_SPEAKER or (isinstance(roles, list) and ROLE_SPEAKER in roles)
    if not has_role:
        raise Forbidden("token does not grant the speaker role", reason="wrong_role")
    sub = claims.get("sub")
    return Identity(session_id, sub if isinstance(sub, str) else None)


class Hs256Verifier(_JwtVerifier):
    """Shared-secret tokens (minted by `kvs-ingest token` or the session backend)."""

    algorithms = ("HS256",)

    def __init__(self, secret: str, *, audience: str | None, issuer: str | None) -> None:
        super().__init__(audience=audience, issuer=issuer)
        self._secret = secret

    async def _key(self, token: str) -> Any:
        return self._secret


class JwksVerifier(_JwtVerifier):
    """Asymmetric tokens verified with an identity provider's published keys.

    The key set is fetched with aiohttp (never a blocking call on the loop), kept for
    `JWKS_CACHE_SECONDS`, and re-read early when a token names an unknown `kid` (key rotation),
    at most every `JWKS_MIN_REFRESH_SECONDS` so that junk tokens cannot hammer the provider.
    Call `close()` when done.
    """

    algorithms = ("RS256", "ES256")

    def __init__(
        self,
        url: str,
        *,
        audience: str | None,
        issuer: str | None,
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__(audience=audience, issuer=issuer)
        self.url = url
        self._clock = clock
        self._keys: dict[str | None, Any] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _key(self, token: str) -> Any:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("token invalid", reason="invalid") from None
        if header.get("alg") not in self.algorithms:
            raise Unauthorized("token algorithm not accepted", reason="invalid")
        kid = header.get("kid")
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at > JWKS_CACHE_SECONDS
        unknown = kid not in self._keys and (
            self._fetched_at is None or now - self._fetched_at > JWKS_MIN_REFRESH_SECONDS
        )
        if stale or unknown:
            await self._refresh()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if kid not in self._keys:
            raise Unauthorized("token signed with an unknown key", reason="bad_signature")
        return self._keys[kid]

    async def _refresh(self) -> None:
        async with self._lock:
            if self._fetched_at is not None and self._clock() - self._fetched_at < 1.0:
                return  # another task refreshed it just now
            if self._http is None:
                self._http = aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT_SECONDS)
                )
            try:
                async with self._http.get(self.url) as resp:
                    resp.raise_for_status()
                    body = await resp.text()
                jwks = jwt.PyJWKSet.from_json(body)
            except (aiohttp.ClientError, TimeoutError, jwt.PyJWTError, ValueError) as exc:
                log.warning("jwks_fetch_failed", url=self.url, error=type(exc).__name__)
                if not self._keys:
                    raise AuthUnavailable("cannot verify tokens right now", reason="jwks") from None
                return  # keep using the keys we have
            self._keys = {k.key_id: k.key for k in jwks.keys}
            self._fetched_at = self._clock()
            log.info("jwks_loaded", url=self.url, keys=len(self._keys))


def make_verifier(settings: Settings) -> Verifier:
    if settings.auth_mode is AuthMode.HS256:
        assert settings.auth_secret is not None  # Settings checks this
        return Hs256Verifier(
            settings.auth_secret, audience=settings.jwt_audience, issuer=settings.jwt_issuer
        )
    if settings.auth_mode is AuthMode.JWKS:
        assert settings.jwks_url is not None
        return JwksVerifier(
            settings.jwks_url, audience=settings.jwt_audience, issuer=settings.jwt_issuer
        )
    return NoAuth()


def mint_token(
    secret: str,
    session_id: str,
    *,
    ttl: float = 3600.0,
    role: str = ROLE_SPEAKER,
    audience: str | None = None,
    issuer: str | None = None,
    subject: str = "kvs-ingest-token",
    now: float | None = None,
) -> str:
    """An HS256 speaker token, as `kvs-ingest token` prints it."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "session": session_id,
        "role": role,
        "sub": subject,
        "iat": issued,
        "exp": issued + int(ttl),
    }
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


# --- `kvs-ingest token` ------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--session", required=True, help="session id the token may speak into")
    parser.add_argument(
        "--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)"
    )
    parser.add_argument("--role", default=ROLE_SPEAKER, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print {token, expires_at} as JSON")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.auth_secret:
        print("kvs-ingest token: set KVS_INGEST_AUTH_SECRET to sign tokens", file=sys.stderr)
        return 2
    if args.ttl <= 0:
        print("kvs-ingest token: --ttl must be > 0", file=sys.stderr)
        return 2
    from kvs_ingest.server.protocol import SESSION_ID

    if not SESSION_ID.fullmatch(args.session):
        print("kvs-ingest token: --session must match [A-Za-z0-9_.-]{1,128}", file=sys.stderr)
        return 2
    now = time.time()
    token = mint_token(
        settings.auth_secret,
        args.session,
        ttl=args.ttl,
        role=args.role,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        now=now,
    )
    if args.json:
        print(json.dumps({"token": token, "expires_at": int(now) + int(args.ttl)}))
    else:
        print(token)
    return 0
