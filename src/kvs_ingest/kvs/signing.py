"""SigV4 for PutMedia: botocore's signer over the headers we send, with an empty-payload hash.

The body is streamed and not hashed (KVS-PROTOCOL.md, "Signing"): an `AWSRequest` with no body
gives exactly that. Like the C producer we also sign `transfer-encoding` and `user-agent`, which
botocore leaves out by default; aiohttp writes `Transfer-Encoding: chunked` itself, so the caller
drops that one header from what it passes to aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from kvs_ingest.kvs.limits import SERVICE

# Headers botocore refuses to sign but the producers do, with values we control exactly.
_ALSO_SIGNED = frozenset({"transfer-encoding", "user-agent"})


class _PutMediaSigV4(SigV4Auth):  # type: ignore[misc]
    def headers_to_sign(self, request: AWSRequest) -> Any:
        header_map = super().headers_to_sign(request)
        for name, value in request.headers.items():
            if name.lower() in _ALSO_SIGNED:
                header_map[name.lower()] = value
        return header_map


def sign_request(
    url: str,
    headers: Mapping[str, str],
    credentials: Any,
    region: str,
    *,
    method: str = "POST",
) -> dict[str, str]:
    """The headers to send: `headers` plus X-Amz-Date, the security token and Authorization.

    `credentials` are botocore's frozen credentials (`access_key`, `secret_key`, `token`).
    """
    request = AWSRequest(method=method, url=url, headers=dict(headers))
    request.context["payload_signing_enabled"] = True  # hash of the empty payload over HTTPS too
    _PutMediaSigV4(credentials, SERVICE, region).add_auth(request)
    return {name: str(value) for name, value in request.headers.items()}
