# Sourced by the benchmark scripts (bench.sh, bench-data.sh, bench-log-data.sh): the plumbing
# they share. The caller defines say and die, and $work (a scratch directory) before using
# bench_workdir NAME: a scratch directory in $work, and the process lists services_pids and
# other_pids, all ended (services first: they deregister while the agent still runs) and the
# directory removed when the script exits.
bench_workdir() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/gradebook-$1.XXXXXX")
  services_pids=()
  other_pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local pid
  for pid in "${services_pids[@]}" "${other_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}

# bench_start_consul.

# bench_need_tools TOOL...: each tool on PATH, installed from Debian's package of the same name
# when missing and running as root; otherwise stop and name the package.
bench_need_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 && continue
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing $tool"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
    else
      die "$tool is missing: sudo apt-get install $tool"
    fi
  done
}

# bench_warn_if_busy: figures taken while compilers run are noisy; say so rather than hide it.
# Sets busy (the count of compiler processes) for the report's header.
bench_warn_if_busy() {
  busy=$( (pgrep -x cargo || true; pgrep -x rustc || true) | wc -l)
  if [ "$busy" -gt 0 ]; then
    say "warning: $busy compiler processes running: figures will be noisy"
  fi
}

# bench_start_consul CONSUL NODE HTTP DNS SERF_LAN SERF_WAN SERVER GRPC: a dev agent on those
# loopback ports (every port set, so it runs beside any other agent), its log in $work; waits
# for its leader. Sets consul_pid and consul_addr.
bench_start_consul() {
  local consul=$1 node=$2 i leader=
  cat >"$work/consul.json" <<JSON
{"client_addr": "127.0.0.1", "bind_addr": "127.0.0.1", "node_name": "$node",
 "ports": {"http": $3, "dns": $4, "serf_lan": $5, "serf_wan": $6, "server": $7, "grpc": $8}}
JSON
  "$consul" agent -dev -config-file "$work/consul.json" >"$work/consul.log" 2>&1 &
  consul_pid=$!
  consul_addr="http://127.0.0.1:$3"
  for ((i = 0; i < 300; i++)); do
    leader=$(curl -s "$consul_addr/v1/status/leader" || true)
    [ -n "$leader" ] && [ "$leader" != '""' ] && return 0
    sleep 0.1
  done
  die "Consul elected no leader (see $work/consul.log)"
}

# wait_200 URL SECONDS: until URL answers 200, for at most SECONDS.
wait_200() {
  local url=$1 limit=$2 i
  for ((i = 0; i < limit * 10; i++)); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" || true)" = 200 ] && return 0
    sleep 0.1
  done
  die "$url did not answer 200 within ${limit}s (logs in $work)"
}
