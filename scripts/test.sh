#!/usr/bin/env bash
# Runs the whole test suite against a real Consul agent: unit tests, and integration tests that
# start a Consul dev agent and the real service binaries on free ports.
set -euo pipefail

case "${1:-}" in
  -h|--help)
    cat <<'TXT'
Usage: scripts/test.sh [extra cargo test arguments]

Installs Consul if needed (scripts/install-consul.sh), and dig, chromium,
chromedriver and postgresql from Debian's packages when missing; builds every
binary, then runs `cargo test --workspace`. Tests start their own Consul agents on free ports, so a
Consul already running on :8500 is left alone.

Then (without extra arguments) scripts/check-walkthrough.sh replays README's
walkthrough against a fresh run-local.sh. When a Docker engine answers, it then builds the
images with scripts/images.sh --debug-binaries (the binaries just tested, no release build) and
runs the compose tests, which start docker-compose.yml as projects named gradebook-test-*, and
the cluster smoke (scripts/cluster-faults.sh --smoke: docker-compose.cluster.yml's shape, and
its Consul leader killed under load). Under CI=true a missing engine is a failure.
TXT
    exit 0 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# dig for the DNS tests, jq for README's walkthrough, Chromium and ChromeDriver for the browser
# test, a PostgreSQL server for grading's PostgreSQL tests (Debian keeps initdb and pg_ctl off
# PATH, and psql alone is no server; the tests start their own servers on free ports, whatever
# the package's postinst may start on 5432): Debian's packages, installed when missing and when
# this runs as root (otherwise say what to install).
missing=()
command -v dig >/dev/null 2>&1 || missing+=(dnsutils)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ -n "${PG_BIN:-}" ] || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
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

# The images' Debian bases come from debootstrap: minutes of downloads on a fresh machine, so they
# are made while the tests run (the rest of scripts/images.sh waits for them).
bases_log=$(mktemp)
bases_pid=
if [ $# -eq 0 ] && docker info >/dev/null 2>&1; then
  scripts/images.sh --bases >"$bases_log" 2>&1 &
  bases_pid=$!
fi

# End-to-end tests start binaries of other crates, found next to the test executables.
cargo build --workspace --bins
results=$(mktemp)
trap 'rm -f "$results" "$bases_log"' EXIT
status=0
# --no-fail-fast: one failing test binary must not hide the results of the others.
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee -a "$results" || status=1

# README's walkthrough (replayed against a fresh run-local.sh on the usual ports, so it needs them
# and no data/ of a user's) counts as one test; the compose tests need the Docker engine and the
# images scripts/images.sh builds (a plain `cargo test` ignores them). A check that cannot run
# counts as a failure under CI=true, a warning otherwise. With extra arguments (a subset of the
# tests) both are left out.
checks_passed=0
checks_failed=0
cannot_run() { # cannot_run WHAT
  if [ "${CI:-}" = true ]; then
    echo "test: CI=true but $1" >&2
    checks_failed=$((checks_failed + 1))
    status=1
  else
    echo "test: WARNING: $1: it did NOT run" >&2
  fi
}
if [ $# -gt 0 ]; then
  echo "test: extra arguments given: the README walkthrough check and the compose tests were not run"
else
  if ! scripts/check-walkthrough.sh --can-run; then
    cannot_run "the README walkthrough check cannot run (data/ exists or a usual port is taken)"
  elif scripts/check-walkthrough.sh; then
    checks_passed=1
  else
    checks_failed=$((checks_failed + 1))
    status=1
  fi

  if ! docker info >/dev/null 2>&1; then
    cannot_run "no Docker engine answers (docker info): the compose tests cannot run"
  else
    compose_started=$(date +%s)
    bases_ok=true
    if [ -n "$bases_pid" ]; then
      wait "$bases_pid" || bases_ok=false
      cat "$bases_log"
    fi
    # The debug binaries just tested, not a release build: these tests are about how the parts
    # fit, and a release build would add about 7 minutes on a fresh machine.
    if [ "$bases_ok" = true ] && scripts/images.sh --debug-binaries; then
      cargo test -p system-tests --test compose -- --ignored --test-threads=1 2>&1 | tee -a "$results" || status=1
      # The cluster file's smoke (its shape, and the Consul leader killed under load), one check;
      # scripts/cluster-faults.sh runs every cluster scenario.
      if target/debug/faults cluster --smoke; then
        checks_passed=$((checks_passed + 1))
      else
        checks_failed=$((checks_failed + 1))
        status=1
      fi
    else
      echo "test: scripts/images.sh failed: the compose tests could not run"
      checks_failed=$((checks_failed + 1))
      status=1
    fi
    echo "test: images and compose tests took $(( $(date +%s) - compose_started )) s"
  fi
fi

# One closing line for the whole run (cargo prints one per test binary, the last being doc
# tests), with the checks above.
awk -v extra_passed="$checks_passed" -v extra_failed="$checks_failed" \
  '/^test result:/ { passed += $4; failed += $6 }
  END { printf "tests: %d passed, %d failed\n", passed + extra_passed, failed + extra_failed }' "$results"
exit $status
