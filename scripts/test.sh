#!/usr/bin/env bash
# Runs the whole test suite against a real Consul agent: unit tests, and integration tests that
# start a Consul dev agent and the real service binaries on free ports.
set -euo pipefail

case "${1:-}" in
  -h|--help)
    cat <<'TXT'
Usage: scripts/test.sh [extra cargo test arguments]

Installs Consul if needed (scripts/install-consul.sh), and dig, chromium and
chromedriver from Debian's packages when missing; builds every binary, then runs
`cargo test --workspace`. Tests start their own Consul agents on free ports, so a
Consul already running on :8500 is left alone.

Then (without extra arguments) scripts/check-walkthrough.sh replays README's
walkthrough against a fresh run-local.sh. When a Docker engine answers, it then builds the
images with scripts/images.sh and runs the compose tests, which start
docker-compose.yml as projects named gradebook-test-*. Under CI=true a missing
engine is a failure.
TXT
    exit 0 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# dig for the DNS tests, jq for README's walkthrough, Chromium and ChromeDriver for the browser
# test: Debian's packages, installed when missing and when this runs as root (otherwise say what
# to install).
missing=()
command -v dig >/dev/null 2>&1 || missing+=(dnsutils)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test: missing ${missing[*]}: install them (sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

CONSUL_BIN=$(scripts/install-consul.sh)
export CONSUL_BIN
echo "test: using $("$CONSUL_BIN" version | head -n 1) at $CONSUL_BIN"

# End-to-end tests start binaries of other crates, found next to the test executables.
cargo build --workspace --bins
results=$(mktemp)
trap 'rm -f "$results"' EXIT
status=0
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee -a "$results" || status=1

# README's walkthrough, replayed against a fresh run-local.sh on the usual ports (it needs them,
# and no data/ of a user's). Counted as one test.
walkthrough_passed=0
walkthrough_failed=0
if [ $# -gt 0 ]; then
  echo "test: extra arguments given: the README walkthrough check was not run"
elif [ -e data ] || ! scripts/check-walkthrough.sh --can-run 2>/dev/null; then
  if [ "${CI:-}" = true ]; then
    echo "test: CI=true but the walkthrough check cannot run (data/ exists or a port is taken)" >&2
    walkthrough_failed=1
    status=1
  else
    echo "test: WARNING: data/ exists or a usual port is taken: the README walkthrough check did NOT run" >&2
  fi
elif scripts/check-walkthrough.sh; then
  walkthrough_passed=1
else
  walkthrough_failed=1
  status=1
fi

# The compose tests need the Docker engine and the images scripts/images.sh builds; a plain
# `cargo test` ignores them. With extra arguments (a subset of the tests) they are left out.
engine_missing=0
if [ $# -gt 0 ]; then
  echo "test: extra arguments given: the compose tests (services/system-tests/tests/compose.rs) were not run"
elif docker info >/dev/null 2>&1; then
  compose_started=$(date +%s)
  if scripts/images.sh; then
    cargo test -p system-tests --test compose -- --ignored --test-threads=1 2>&1 | tee -a "$results" || status=1
  else
    echo "test: scripts/images.sh failed: the compose tests could not run"
    engine_missing=1
    status=1
  fi
  echo "test: images and compose tests took $(( $(date +%s) - compose_started )) s"
elif [ "${CI:-}" = true ]; then
  echo "test: CI=true but no Docker engine answers (docker info): the compose tests cannot run" >&2
  engine_missing=1
  status=1
else
  echo "test: WARNING: no Docker engine answers (docker info): the compose tests did NOT run" >&2
fi

# One closing line for the whole run (cargo prints one per test binary, the last being doc
# tests); compose tests that could not run at all count as one failure.
awk -v extra="$((engine_missing + walkthrough_failed))" -v walkthrough="$walkthrough_passed" \
  '/^test result:/ { passed += $4; failed += $6 }
  END { printf "tests: %d passed, %d failed\n", passed + walkthrough, failed + extra }' "$results"
exit $status
