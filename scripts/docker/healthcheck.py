"""Container health probe: exit 0 when the service's liveness URL answers 200, 1 otherwise.

The image has no curl (slim images should not), so Docker's HEALTHCHECK runs this with the
image's own Python. With no argument it probes `/healthz` on the port the service listens on
(`KVS_INGEST_PORT`), over HTTPS when the service terminates TLS itself; the emulator's
healthcheck passes its own URL. Standard library only: it must work before anything else does.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.request


def default_url() -> str:
    port = os.environ.get("KVS_INGEST_PORT", "8080")
    scheme = "https" if os.environ.get("KVS_INGEST_TLS_CERT_FILE") else "http"
    return f"{scheme}://127.0.0.1:{port}/healthz"


def probe(url: str, timeout: float) -> bool:
    # The certificate names the public host, not 127.0.0.1: liveness is not a TLS check.
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return bool(response.status == 200)
    except (OSError, ValueError) as exc:
        print(f"healthcheck {url}: {exc}", file=sys.stderr)
        return False


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else default_url()
    return 0 if probe(url, timeout=float(os.environ.get("HEALTHCHECK_TIMEOUT", "3"))) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
