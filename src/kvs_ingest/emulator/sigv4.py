"""SigV4 verification (sans-I/O): recompute a request's signature from what was received.

AWS Signature Version 4 ("Create a canonical request" in the IAM user guide). The canonical
request uses the SignedHeaders' values exactly as received, never a rebuilt URL: the KVS C
producer signs a `Host` without the port even on a non-default port (KVS-PROTOCOL.md).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

from kvs_ingest.emulator.errors import ApiError

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_AUTH_RE = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<sig>[0-9a-fA-F]+)\s*$"
)
_SPACES = re.compile(r"\s+")


def _forbidden(code: str, message: str) -> ApiError:
    return ApiError(403, code, message)


@dataclass(frozen=True, slots=True)
class Authorization:
    access_key: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @classmethod
    def parse(cls, header: str | None) -> Authorization:
        if not header:
            raise _forbidden("MissingAuthenticationTokenException", "Missing Authentication Token")
        match = _AUTH_RE.match(header.strip())
        if match is None:
            raise _forbidden(
                "IncompleteSignatureException",
                "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature'.",
            )
        parts = match["cred"].split("/")
        if len(parts) != 5 or parts[4] != "aws4_request":
            raise _forbidden("IncompleteSignatureException", "Credential is malformed.")
        return cls(
            parts[0], parts[1], parts[2], parts[3], tuple(match["signed"].split(";")), match["sig"]
        )


def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    key = ("AWS4" + secret_key).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def canonical_request(
    method: str,
    raw_path: str,
    query: Iterable[tuple[str, str]],
    headers: Sequence[tuple[str, str]],
    signed_headers: Sequence[str],
    payload_hash: str,
) -> str:
    path = quote(unquote(raw_path or "/"), safe="/~")
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in query)
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    lines = []
    for name in signed_headers:
        values = [_SPACES.sub(" ", v.strip()) for k, v in headers if k.lower() == name]
        lines.append(f"{name}:{','.join(values)}\n")
    return "\n".join(
        (method, path, canonical_query, "".join(lines), ";".join(signed_headers), payload_hash)
    )


class SigV4Verifier:
    """Checks requests against one set of credentials; raises `ApiError` (403) as AWS does."""

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        *,
        service: str = "kinesisvideo",
        clock_skew_seconds: float | None = 900.0,
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._service = service
        self._skew = clock_skew_seconds

    def verify(
        self,
        method: str,
        raw_path: str,
        query: Iterable[tuple[str, str]],
        headers: Sequence[tuple[str, str]],
        payload_hashes: Sequence[str],
        now: datetime,
    ) -> str:
        """Raise unless one of `payload_hashes` gives the received signature; return the key id.

        The caller passes the payload hashes it accepts (the `x-amz-content-sha256` value, the
        body's hash, or the empty-payload hash for the streamed PutMedia body).
        """
        lookup = {k.lower(): v for k, v in headers}
        auth = Authorization.parse(lookup.get("authorization"))
        if auth.access_key != self._access_key:
            raise _forbidden(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        amz_date = lookup.get("x-amz-date") or ""
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise _forbidden(
                "IncompleteSignatureException", "Missing or malformed X-Amz-Date header."
            ) from None
        if auth.service != self._service or auth.date != amz_date[:8]:
            raise _forbidden(
                "InvalidSignatureException",
                f"Credential should be scoped to a valid date and service '{self._service}'.",
            )
        if "host" not in auth.signed_headers:
            raise _forbidden("InvalidSignatureException", "'Host' must be a signed header.")
        if self._skew is not None and abs((now - signed_at).total_seconds()) > self._skew:
            fmt = "%Y%m%dT%H%M%SZ"
            raise _forbidden(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier than "
                f"{(now - _minutes(self._skew)).strftime(fmt)} "
                f"({now.strftime(fmt)} - {int(self._skew // 60)} min.)",
            )
        key = signing_key(self._secret_key, auth.date, auth.region, auth.service)
        scope = f"{auth.date}/{auth.region}/{auth.service}/aws4_request"
        query = list(query)
        for payload_hash in dict.fromkeys(payload_hashes):
            creq = canonical_request(
                method, raw_path, query, headers, auth.signed_headers, payload_hash
            )
            to_sign = "\n".join(
                (ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest())
            )
            expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
            if hmac.compare_digest(expected, auth.signature.lower()):
                return auth.access_key
        raise _forbidden(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. "
            "Consult the service documentation for details.",
        )


def _minutes(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)
