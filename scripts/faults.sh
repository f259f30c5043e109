#!/usr/bin/env bash
# Runs the fault scenarios of RELIABILITY.md against the real binaries and a real Consul agent,
# on loopback, and prints one table of figures. Not part of scripts/test.sh: two of the
# scenarios hold a 30 s outage, and the scenarios take about two minutes after the build.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/faults.sh [--debug] [--markdown FILE] [SCENARIO...]

Builds every binary (release unless --debug), installs Consul if needed
(scripts/install-consul.sh), then runs the fault scenarios (all of them, or
those numbered) and prints their figures as a table. Exits 1 if any
scenario's claim failed.

  1  SIGKILL under load: one grading instance, later one log instance
  2  rolling restart of every grading instance under load
  3  Consul agent stopped for 30 s, started again with its state lost
  4  log service down for 30 s while grading and the portal produce records
  5  disk full under log and grading (a 16 MiB tmpfs: needs root, else skipped)
  6  SIGKILL of log and grading during writes, and a torn last line
  8  misbehaving providers: a grading instance that hangs, answers 500 or
     junk, or streams a huge body, beside a healthy one, under load through
     the portal (figures: failed requests, time to ejection, portal memory)
  9  connections: slow headers, thousands idle, over the cap, thousands aborted

Options:
  --debug          build and run the debug profile (quicker to build)
  --markdown FILE  also write the table as Markdown to FILE

The load is generated in Rust (services/system-tests/src/bin/faults/load.rs):
every load is bounded in count and time and sends only to 127.0.0.1. The
bad-input scenario runs with the ordinary tests (scripts/test.sh).
TXT
}

profile=release
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --debug) profile=debug ;;
    *) args+=("$1") ;;
  esac
  shift
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONSUL_BIN=$(scripts/install-consul.sh)
export CONSUL_BIN
echo "faults: using $("$CONSUL_BIN" version | head -n 1) at $CONSUL_BIN"
if [ "$(id -u)" != 0 ]; then
  echo "faults: not root: scenario 5 (disk full on a tmpfs) will be skipped" >&2
fi

if [ "$profile" = release ]; then
  cargo build --release --workspace --bins
else
  cargo build --workspace --bins
fi
# The runner finds the service binaries next to itself, so it runs exactly what was built.
exec "${CARGO_TARGET_DIR:-target}/$profile/faults" "${args[@]+"${args[@]}"}"
