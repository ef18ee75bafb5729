#!/usr/bin/env bash
# Builds a local stand-in for the official `python:3.11-slim` image when no registry is reachable.
#
# debootstrap makes a minimal Debian bookworm with Debian's python3.11; a virtual environment
# rooted at /usr/local then gives the official image's layout: python, python3 and pip in
# /usr/local/bin, packages in /usr/local/lib/python3.11/site-packages, nothing "externally
# managed". `docker import` turns the folder into an image with the official image's ENV and CMD,
# tagged with the name the Dockerfile's PYTHON_IMAGE build argument defaults to.
#
# Cached twice: an image already tagged is used as it is, and the root filesystem tarball is
# kept under $KVS_IMAGE_CACHE so re-creating the image (after `docker system prune`) skips
# debootstrap. Usage: base-image.sh [TAG]   (prints the tag on stdout)
set -euo pipefail

TAG=${1:-python:3.11-slim}
CACHE=${KVS_IMAGE_CACHE:-/var/cache/kvs-ingest}
# The host's own Debian mirror when it has one (a local mirror or proxy), else the CDN.
host_mirror() {
  { grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
    grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}'; } |
    grep -vE 'security|updates|nodesource|google' | grep -E '/debian/?$' | head -n 1 || true
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TARBALL="$CACHE/python-3.11-slim-bookworm-standin.tar.gz"
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG: present" >&2
  echo "$TAG"
  exit 0
fi

if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null 2>&1 || {
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      -o DPkg::Lock::Timeout=600 debootstrap >/dev/null
  }
  $SUDO mkdir -p "$CACHE"
  ROOT=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap '$SUDO rm -rf "$ROOT"' EXIT
  echo "base image $TAG: debootstrap bookworm into $ROOT" >&2
  $SUDO debootstrap --variant=minbase --include=ca-certificates bookworm "$ROOT" "$MIRROR" >&2
  # debootstrap's resolver misses some of python3.11-venv's dependencies; apt inside does not.
  $SUDO cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  $SUDO chroot "$ROOT" apt-get update -qq
  $SUDO chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends python3.11 python3.11-venv netbase tzdata >&2
  $SUDO chroot "$ROOT" apt-get clean
  : | $SUDO tee "$ROOT/etc/resolv.conf" >/dev/null
  # The official image's layout: a Python whose prefix is /usr/local and a pip that installs.
  $SUDO chroot "$ROOT" /usr/bin/python3.11 -m venv /usr/local
  $SUDO chroot "$ROOT" /usr/local/bin/python -m pip --version >&2
  $SUDO chroot "$ROOT" /usr/local/bin/python -c "import ssl, sqlite3, venv" >&2
  # What slim images leave out.
  $SUDO rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin \
    "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* \
    "$ROOT"/usr/share/info/* "$ROOT"/usr/share/locale/* "$ROOT"/var/log/*.log \
    "$ROOT"/root/.cache
  $SUDO tar -C "$ROOT" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' \
    --exclude='./sys/*' -czf "$TARBALL.part" .
  $SUDO mv "$TARBALL.part" "$TARBALL"
fi

echo "base image $TAG: docker import $TARBALL" >&2
docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PYTHON_VERSION=3.11' \
  --change 'CMD ["python3"]' \
  --message "local stand-in for $TAG (debootstrap bookworm + python3.11)" \
  "$TARBALL" "$TAG" >&2
echo "$TAG"
