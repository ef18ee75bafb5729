#!/usr/bin/env bash
# Builds the kvs-ingest image with BuildKit, the way CI does.
#
#   scripts/docker/build.sh [TAG]     (default kvs-ingest:local; prints the tag on stdout)
#
# PYTHON_IMAGE (default python:3.11-slim) is the base; when it is not in the engine and cannot
# be pulled (no registry reachable), base-image.sh builds a local stand-in under that name.
# The host's CA bundle and pip index settings go in as BuildKit secrets, never into a layer.
set -euo pipefail
cd "$(dirname "$0")/../.."

TAG=${1:-kvs-ingest:local}
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim}
DOCKER=$(scripts/docker/docker-cli.sh)

if ! docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
  if ! timeout "${KVS_PULL_TIMEOUT:-30}" docker pull -q "$PYTHON_IMAGE" >/dev/null 2>&1; then
    scripts/docker/base-image.sh "$PYTHON_IMAGE" >/dev/null
  fi
fi

secrets=()
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$CA_BUNDLE" ] && secrets+=(--secret "id=ca_bundle,src=$CA_BUNDLE")
# Only network index settings make sense inside the build (file:// indexes and find-links
# point at this host's disk, and its constraints file does not exist there).
python3 - "$tmp/pip.conf" <<'PY'
import configparser, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                     text=True).stdout
keep = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    name = key.rsplit(".", 1)[-1]
    value = value.strip().strip("'\"")
    if name in ("index-url", "extra-index-url", "trusted-host"):
        urls = [v for v in value.split() if name == "trusted-host" or v.startswith(("http://", "https://"))]
        if urls:
            keep[name] = " ".join(urls)
if keep:
    conf = configparser.ConfigParser()
    conf["global"] = keep
    with open(sys.argv[1], "w") as f:
        conf.write(f)
PY
[ -s "$tmp/pip.conf" ] && secrets+=(--secret "id=pip_conf,src=$tmp/pip.conf")

# --network host: with `dockerd --bridge=none` build steps have no other way out (pip, apt).
DOCKER_BUILDKIT=1 $DOCKER build --network host --progress plain \
  --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" "${secrets[@]}" -t "$TAG" . >&2
echo "$TAG"
