#!/usr/bin/env bash
# Prints the path of a docker client that can build with BuildKit on this engine.
#
# Clients from Docker 23 on need the buildx plugin for BuildKit; Debian's docker.io (20.10)
# has BuildKit built in. A machine may have a newer client first on PATH without buildx.
set -euo pipefail
for cli in "$(command -v docker || true)" /usr/bin/docker; do
  [ -x "$cli" ] || continue
  if "$cli" buildx version >/dev/null 2>&1; then echo "$cli"; exit 0; fi
  major=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
  if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then echo "$cli"; exit 0; fi
done
echo "no docker client with BuildKit: install the buildx plugin or Debian's docker.io" >&2
exit 1
