"""TLS on the service port when TLS_CERT_FILE/TLS_KEY_FILE are set: HTTPS probes and WSS."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from .conftest import NoSessions, read_until_closed, running_server, t


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_https_probes_and_wss_speakers(tmp_path: Path) -> None:
    """With a certificate configured, /healthz answers over HTTPS and speakers use WSS."""
    cert, key = self_signed(tmp_path)
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    async with running_server(NoSessions(), tls_cert_file=cert, tls_key_file=key) as srv:
        base = f"127.0.0.1:{srv.server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://{base}/healthz", ssl=ctx) as resp:
                assert resp.status == 200
        url = f"wss://{base}/v1/sessions/s/speaker?format=flac"
        async with connect(url, ssl=ctx, subprotocols=["kvs-ingest.v1"], open_timeout=t(20)) as ws:  # type: ignore[list-item]
            ending = await read_until_closed(ws)
    assert ending.code == 4415
