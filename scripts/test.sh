#!/usr/bin/env bash
# Runs the whole test suite against a real Consul agent: unit tests, and integration tests that
# start a Consul dev agent and the real service binaries on free ports.
set -euo pipefail

case "${1:-}" in
  -h|--help)
    cat <<'TXT'
Usage: scripts/test.sh [extra cargo test arguments]

Installs Consul if needed (scripts/install-consul.sh), builds every binary, then runs
`cargo test --workspace`. Tests start their own Consul agents on free ports, so a
Consul already running on :8500 is left alone.
TXT
    exit 0 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CONSUL_BIN=$(scripts/install-consul.sh)
export CONSUL_BIN
echo "test: using $("$CONSUL_BIN" version | head -n 1) at $CONSUL_BIN"

# End-to-end tests start binaries of other crates, found next to the test executables.
cargo build --workspace --bins
cargo test --workspace "$@"
