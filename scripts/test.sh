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
TXT
    exit 0 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# dig for the DNS tests, Chromium and ChromeDriver for the browser test: Debian's packages,
# installed when missing and when this runs as root (otherwise say what to install).
missing=()
command -v dig >/dev/null 2>&1 || missing+=(dnsutils)
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
cargo test --workspace "$@" 2>&1 | tee "$results"
# One closing line for the whole run (cargo prints one per test binary, the last being doc tests).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$results"
