#!/usr/bin/env bash
# Makes sure a Docker engine answers on this machine, starting one when none does.
#
# CI machines here have no systemd and no registry access: we install Debian's docker.io when
# dockerd is missing and start `dockerd --iptables=false --bridge=none` in the background (no
# NAT rules are touched on the host; containers reach each other over user-defined bridge
# networks, which compose creates). An engine that already answers is used as it is.
#
# Prints the engine's version on success; exits non-zero with the reason when it cannot start.
set -euo pipefail

LOG=${KVS_DOCKERD_LOG:-/var/log/kvs-ingest-dockerd.log}
WAIT_SECONDS=${KVS_DOCKERD_WAIT_SECONDS:-90}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

engine_answers() { docker info >/dev/null 2>&1; }

if engine_answers; then
  docker version --format 'docker engine {{.Server.Version}} (already running)'
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing Debian packages: docker.io docker-compose debootstrap" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=600 docker.io docker-compose debootstrap >/dev/null
fi

# A dockerd we started earlier may still be starting up, or may have died leaving its pid file.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
  $SUDO rm -f /var/run/docker.pid
fi
if [ ! -f /var/run/docker.pid ]; then
  echo "starting dockerd --iptables=false --bridge=none (log: $LOG)" >&2
  # setsid: the engine outlives this script and the test session that called it.
  $SUDO setsid dockerd --iptables=false --bridge=none >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq "$WAIT_SECONDS"); do
  if engine_answers; then
    docker version --format 'docker engine {{.Server.Version}} (started)'
    exit 0
  fi
  sleep 1
done
echo "dockerd did not answer within ${WAIT_SECONDS}s; last lines of $LOG:" >&2
tail -n 30 "$LOG" >&2 || true
exit 1
