#!/usr/bin/env bash
# Runs the whole gradebook on this machine: a Consul dev agent (unless one already answers on
# :8500), then the log, grading and portal services, each registered with that agent.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/run-local.sh [--release]

Installs Consul (and dig, for the README's walkthrough) if needed, builds the
services, starts a Consul dev agent with
consul/dev.hcl (UI and API on :8500, DNS on :8600) unless an agent already answers
there, then starts log (:4000), grading (:6100) and portal (:5000) with their data
under ./data. Prints the URLs, then waits: Ctrl-C stops everything (each service
deregisters from Consul before it exits). A service that exits while the others
run is reported with the last lines of its log. Each run's logs are in data/run/;
the previous run's are kept in data/run/previous/.

  --release   build with optimisations (slower to build, faster to run)

Environment: RUST_LOG (default info) is passed to the services.
TXT
}

profile=debug
cargo_flags=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
    --release) profile=release; cargo_flags+=(--release) ;;
    *) usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
consul=$(scripts/install-consul.sh)

# dig is not needed to run, only for the walkthrough's DNS queries: install it as test.sh does,
# or say which package has it.
if ! command -v dig >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing dnsutils (dig) for the walkthrough's DNS queries"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dnsutils >/dev/null \
      || echo "could not install dnsutils; the DNS examples need dig" >&2
  else
    echo "note: no dig on PATH; the walkthrough's DNS examples need it (package dnsutils)" >&2
  fi
fi

bin="$root/target/$profile"
if [ ! -x "$bin/portal" ]; then
  echo "first build of the services: a few minutes (about 3 for debug, 5 for --release on 2 cores)"
fi
# Only the three services: a tool crate being worked on elsewhere in the workspace cannot stop a run.
cargo build "${cargo_flags[@]}" -p log-service -p grading-service -p portal --bins
mkdir -p data/run/previous
# Keep the last run's logs for a look after a surprise, rather than truncating them.
for old_log in data/run/*.log; do
  [ -e "$old_log" ] && mv -f "$old_log" data/run/previous/
done
export CONSUL_HTTP_ADDR=http://127.0.0.1:8500
export RUST_LOG="${RUST_LOG:-info}"

# Every child runs in its own session (setsid), so a Ctrl-C in the terminal reaches only this
# script, which then stops them one at a time in reverse order of start: portal, grading, log,
# then the Consul agent if it started one. Each service thus deregisters from a running agent and
# ships its last log records to a running log service.
pids=()
names=()
stop_all() {
  trap - INT TERM EXIT
  echo
  echo "stopping…"
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
  echo "stopped; logs are in data/run/"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

agent_up() { curl -sf -o /dev/null "$CONSUL_HTTP_ADDR/v1/status/leader"; }
if agent_up; then
  echo "using the Consul agent already answering at $CONSUL_HTTP_ADDR"
else
  setsid "$consul" agent -dev -config-file consul/dev.hcl >data/run/consul.log 2>&1 &
  consul_pid=$!
  for _ in $(seq 1 100); do agent_up && break; sleep 0.1; done
  agent_up || { echo "Consul did not start; see data/run/consul.log" >&2; exit 1; }
  pids+=("$consul_pid")
  names+=(consul)
fi

start() { # start NAME BINARY PORT [ARGS...]
  local name=$1 binary=$2 port=$3 pid
  # Something else answering on the port would pass the health check below in our stead.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is already in use (see: ss -ltnp 'sport = :$port'); $name not started" >&2
    exit 1
  fi
  setsid "$bin/$binary" --listen "127.0.0.1:$port" "${@:4}" >"data/run/$name.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  names+=("$name")
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "$name exited at start:" >&2
      tail -n 5 "data/run/$name.log" >&2
      exit 1
    fi
    curl -sf -o /dev/null "http://127.0.0.1:$port/health" && return 0
    sleep 0.1
  done
  echo "$name did not become healthy; see data/run/$name.log" >&2
  exit 1
}
start log log-service 4000 --data-dir data/log
start grading grading-service 6100 --data-dir data/grading
start portal portal 5000

cat <<TXT

gradebook is running:
  Consul UI   http://127.0.0.1:8500/ui/
  Consul DNS  dig @127.0.0.1 -p 8600 grading.service.consul SRV
  log         http://127.0.0.1:4000/log
  grading     http://127.0.0.1:6100/students
  portal      http://127.0.0.1:5000/

Logs: data/run/*.log.  Press Ctrl-C to stop everything.
TXT

# Watch the children: one that exits on its own is reported at once. The others keep running
# (callers fail over, or say the dependency is unavailable), so the rest can still be explored.
reported=()
while true; do
  sleep 1 &
  wait $! || true
  alive=0
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[i]}" 2>/dev/null; then
      alive=$((alive + 1))
    elif [ -z "${reported[i]:-}" ]; then
      reported[i]=1
      status=0
      wait "${pids[i]}" 2>/dev/null || status=$?
      echo "" >&2
      echo "${names[i]} exited with status $status while running; the last lines of data/run/${names[i]}.log:" >&2
      tail -n 10 "data/run/${names[i]}.log" >&2
    fi
  done
  if [ "$alive" = 0 ]; then
    echo "every process has exited" >&2
    exit 1
  fi
done
