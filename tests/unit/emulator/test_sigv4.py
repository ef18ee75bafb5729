"""SigV4 verification against botocore's own signer and the C producer's recorded requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from kvs_ingest.emulator.errors import ApiError
from kvs_ingest.emulator.sigv4 import EMPTY_SHA256, SigV4Verifier

CAPTURE = Path(__file__).resolve().parents[4] / "shared" / "kvs-producer-c-capture"


def signed(body: bytes = b'{"StreamName":"s"}', url: str = "http://127.0.0.1:4567/describeStream",
           secret: str = "test") -> AWSRequest:  # fmt: skip
    request = AWSRequest(method="POST", url=url, data=body, headers={"x-amzn-x": "a  b "})
    SigV4Auth(Credentials("test", secret), "kinesisvideo", "us-east-1").add_auth(request)
    return request


def verify(request: AWSRequest, *, host: str = "127.0.0.1:4567", hashes: list[str] | None = None,
           now: datetime | None = None, skew: float | None = 900.0) -> str:  # fmt: skip
    import hashlib

    headers = [("Host", host), *((k, str(v)) for k, v in request.headers.items())]
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    return SigV4Verifier("test", "test", clock_skew_seconds=skew).verify(
        "POST",
        request.url.split("4567", 1)[-1] if "4567" in request.url else "/putMedia",
        [],
        headers,
        hashes or [hashlib.sha256(body).hexdigest()],
        now or datetime.now(UTC),
    )


def test_botocore_signature_verifies() -> None:
    """A request signed by botocore verifies, whitespace in header values normalised."""
    assert verify(signed()) == "test"


def test_wrong_secret_is_invalid_signature() -> None:
    """A signature made with another secret is an InvalidSignatureException (403)."""
    with pytest.raises(ApiError) as exc:
        verify(signed(secret="other"))
    assert (exc.value.status, exc.value.code) == (403, "InvalidSignatureException")


def test_tampered_body_fails() -> None:
    """Changing the body after signing breaks the signature."""
    import hashlib

    with pytest.raises(ApiError):
        verify(signed(), hashes=[hashlib.sha256(b"{}").hexdigest()])


def test_stale_date_refused_and_skew_override() -> None:
    """A date 16 minutes off is refused; with the skew check off the same request passes."""
    later = datetime.now(UTC) + timedelta(minutes=16)
    with pytest.raises(ApiError) as exc:
        verify(signed(), now=later)
    assert "Signature expired" in exc.value.message
    assert verify(signed(), now=later, skew=None) == "test"


def test_unknown_key_and_missing_header() -> None:
    """An unknown key id and a request without Authorization get AWS's names."""
    request = signed()
    verifier = SigV4Verifier("other", "test")
    headers = [(k, str(v)) for k, v in request.headers.items()]
    with pytest.raises(ApiError) as exc:
        verifier.verify("POST", "/describeStream", [], headers, [EMPTY_SHA256], datetime.now(UTC))
    assert exc.value.code == "UnrecognizedClientException"
    with pytest.raises(ApiError) as exc:
        verifier.verify("POST", "/", [], [("Host", "x")], [EMPTY_SHA256], datetime.now(UTC))
    assert exc.value.code == "MissingAuthenticationTokenException"


@pytest.mark.skipif(not CAPTURE.is_dir(), reason="capture not available")
@pytest.mark.parametrize("name", ["001-describeStream.json", "002-getDataEndpoint.json",
                                  "003-putMedia.json"])  # fmt: skip
def test_recorded_producer_signatures(name: str) -> None:
    """The C producer's recorded requests verify; a rebuilt Host with a port does not."""
    import hashlib

    call = json.loads((CAPTURE / name).read_text())
    verifier = SigV4Verifier(
        "AKIDHELDOUTFAKE00001", "heldoutFakeSecretKey0000000000000000000", clock_skew_seconds=None
    )
    body = call.get("body_text", "").encode()
    hashes = [EMPTY_SHA256] if call["op"] == "putMedia" else [hashlib.sha256(body).hexdigest()]
    headers = [(k, v) for k, v in call["headers"]]
    assert verifier.verify("POST", call["path"], [], headers, hashes, datetime.now(UTC))
    headers[0] = ("Host", "127.0.0.1:80")  # a rebuilt Host would not match
    with pytest.raises(ApiError):
        verifier.verify("POST", call["path"], [], headers, hashes, datetime.now(UTC))
