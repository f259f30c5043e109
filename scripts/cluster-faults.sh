#!/usr/bin/env bash
# Runs the cluster scenarios of RELIABILITY.md: docker-compose.cluster.yml (three Consul servers,
# three service hosts, PostgreSQL) on the local Docker engine, under load through the portals,
# and prints one table of figures. Not part of scripts/test.sh, which runs only --smoke: the
# whole run takes about ten minutes.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/cluster-faults.sh [--smoke] [--markdown FILE] [SCENARIO...]

Builds the images (scripts/images.sh), then starts docker-compose.cluster.yml as
project gradebook-test-cluster on free ports on 127.0.0.1, checks its shape
(Raft peers, DNS from two agents, the Consul UI's nodes page in Chromium, a
grade added through one portal seen through the other) and runs the scenarios (all, or those numbered) on it:

  1  the Consul leader killed under load: a new leader, 0 failed requests
  2  host-2 cut off the network, then connected again
  3  host-2 stopped whole (agent and services), then started again
  4  2 of 3 Consul servers stopped (quorum lost) for 15 s
  5  a rolling upgrade of every service container under load
  6  PostgreSQL stopped for 8 s under load, then started again

Exits 1 if any claim failed; the cluster is taken down with its volumes.

  --smoke          the shape and scenario 1 only
  --markdown FILE  also write the table as Markdown to FILE

Needs root (for debootstrap, once), a Docker engine, dig (dnsutils), and chromium
with chromium-driver (scripts/test.sh installs them). The UI's picture goes to
target/screenshots/cluster-consul-nodes.png (or $GRADEBOOK_SCREENSHOTS).
TXT
}

for arg in "$@"; do
  case "$arg" in -h|--help) usage; exit 0 ;; esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
docker info >/dev/null 2>&1 || { echo "cluster-faults: no Docker engine answers (docker info)" >&2; exit 1; }
for tool in dig:dnsutils chromium:chromium chromedriver:chromium-driver; do
  command -v "${tool%%:*}" >/dev/null 2>&1 \
    || { echo "cluster-faults: ${tool%%:*} is missing (apt-get install ${tool#*:})" >&2; exit 1; }
done
scripts/images.sh
# The runner itself needs no release build: the services run from the images.
cargo build -p system-tests --bin faults
exec target/debug/faults cluster "$@"
