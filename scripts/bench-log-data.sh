#!/usr/bin/env bash
# How the log's cost grows with its data: opens a log store of 100k, 1M and 10M records (1x,
# 10x, 100x) and measures, for each, the opening time and memory and three loads under wrk:
# the newest records, the newest of a rare service, and a durable POST. Benchmarks are not
# tests: nothing fails on a number. Separate from bench.sh, whose main flow measures the
# services side by side; this one needs gigabytes of scratch data, written and deleted here.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/bench-log-data.sh [--quick] [--sizes "N N ..."] [--log-bin PATH]

Builds in release mode, starts a Consul dev agent on free ports, and for each size writes a
records file (services/bench log-data: four busy services, one record in 10,000 from `rare`),
starts log-service on it and measures:
  - first, the durable text POST /log on an empty store against the POST ceiling (the
    `ceiling` binary's POST /log: reads the body, answers 201, stores nothing), wrk with 2
    threads and 32 connections as in bench.sh, the ceiling before and after; the ratio is to
    the mean of the two, with the CPU each process spent per request;
  - open: seconds from start until /health answers (the store reads the whole file), and the
    RSS once open and after the loads;
  - GET /log?limit=50 (the newest), GET /log?service=rare&limit=50, and a durable text
    POST /log, each with wrk: 2 threads, 8 connections, 10 s after a 1 s warm-up.
The data files (about 200 bytes a record: 2 GB at 10M) are deleted after each size.

  --quick        2 s loads, sizes 100000 and 1000000.
  --post-only    only the durable POST against the POST ceiling.
  --sizes LIST   the record counts to measure (default "100000 1000000 10000000").
  --log-bin P    measure this log-service binary instead of the one built here (e.g. main's,
                 for a before/after).
TXT
}

duration=10
sizes="100000 1000000 10000000"
log_bin=""
post_only=false
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --quick) duration=2; sizes="100000 1000000" ;;
    --sizes) sizes=$2; shift ;;
    --log-bin) log_bin=$2; shift ;;
    --post-only) post_only=true ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
threads=2
connections=8

cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { echo "bench-data: $*" >&2; }
die() { echo "bench-data: $*" >&2; exit 1; }
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
bench_need_tools wrk curl
consul=$(scripts/install-consul.sh)

say "building in release mode"
cargo build --release -p log-service -p bench --bins >&2
bin="${CARGO_TARGET_DIR:-$(pwd)/target}/release"
log_bin=${log_bin:-$bin/log-service}
say "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"

bench_workdir bench-log-data

read -r -a ports <<<"$("$bin/discovery-bench" free-ports 8)"
log_port=${ports[6]} ceiling_port=${ports[7]}
bench_start_consul "$consul" bench-log-data "${ports[@]:0:6}"
other_pids+=("$consul_pid")

cat >"$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.0f %.0f %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
LUA
{
  echo 'wrk.method = "POST"'
  echo 'wrk.headers["Content-Type"] = "text/plain"'
  echo 'wrk.body = "bench: one durable record from wrk"'
  cat "$work/report.lua"
} >"$work/post-text.lua"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# measure_post NAME URL PID: prints "NAME req/s p50 p99 errors cpu_us_per_request" (32 connections).
measure_post() {
  local name=$1 url=$2 pid=$3 out result before n us
  wrk -t"$threads" -c32 -d1s -s "$work/post-text.lua" "$url" >/dev/null 2>&1 || true
  before=$(cpu_ticks "$pid")
  out=$(wrk -t"$threads" -c32 -d"${duration}s" -s "$work/post-text.lua" "$url" 2>&1) \
    || die "wrk failed on $url: $out"
  result=$(grep '^RESULT ' <<<"$out") || die "no result from wrk on $url: $out"
  read -r _ n us l50 l99 errors <<<"$result"
  awk -v name="$name" -v n="$n" -v us="$us" -v a="$l50" -v b="$l99" -v e="$errors" \
    -v t="$(( $(cpu_ticks "$pid") - before ))" -v hz="$hz" \
    'BEGIN { printf "%-22s %8.0f %7.2f %7.2f %4d %7.1f\n", name, n / (us / 1e6), a / 1000, b / 1000, e, t / hz * 1e6 / n }'
}

rss_mb() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
# measure URL [SCRIPT]: prints "req/s p50_ms p99_ms errors".
measure() {
  local url=$1 script=${2:-$work/report.lua} out result
  wrk -t"$threads" -c"$connections" -d1s --timeout 60s -s "$script" "$url" >/dev/null 2>&1 || true
  out=$(wrk -t"$threads" -c"$connections" -d"${duration}s" --timeout 60s -s "$script" "$url" 2>&1) \
    || die "wrk failed on $url: $out"
  result=$(grep '^RESULT ' <<<"$out") || die "no result from wrk on $url: $out"
  read -r _ n us l50 l99 errors <<<"$result"
  awk -v n="$n" -v us="$us" -v a="$l50" -v b="$l99" -v e="$errors" \
    'BEGIN { printf "%.0f %.2f %.2f %d", n / (us / 1e6), a / 1000, b / 1000, e }'
}

"$bin/ceiling" --listen "127.0.0.1:$ceiling_port" 2>"$work/ceiling.log" &
ceiling_pid=$!
other_pids+=("$ceiling_pid")
CONSUL_HTTP_ADDR="http://127.0.0.1:${ports[0]}" RUST_LOG=warn "$log_bin" \
  --listen "127.0.0.1:$log_port" --data-dir "$work/post" 2>"$work/log-post.log" &
post_pid=$!
other_pids+=("$post_pid")
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$log_port/health" || true)" = 200 ]; do
  sleep 0.05
done
say "durable POST /log against the POST ceiling"
printf '%-22s %8s %7s %7s %4s %7s\n' figure "req/s" p50_ms p99_ms err cpu_us
measure_post "ceiling POST /log" "http://127.0.0.1:$ceiling_port/log" "$ceiling_pid"
measure_post "log POST /log durable" "http://127.0.0.1:$log_port/log?service=bench" "$post_pid"
measure_post "ceiling again" "http://127.0.0.1:$ceiling_port/log" "$ceiling_pid"
kill -TERM "$post_pid"
wait "$post_pid" 2>/dev/null || true
if $post_only; then exit 0; fi

printf '%-9s %7s %6s %6s  %-30s %-30s %-30s\n' records "open_s" rss_mb rss_end \
  "GET newest: rps p50 p99 err" "GET rare: rps p50 p99 err" "POST durable: rps p50 p99 err"
for n in $sizes; do
  data="$work/data-$n"
  say "writing $n records"
  "$bin/log-data" --records "$n" --dir "$data"
  say "data: $(du -sh "$data" | cut -f1); starting log-service"
  # The file as the service reads it at start: from the page cache, as after any recent write.
  cat "$data/records.jsonl" >/dev/null
  started=$(date +%s.%N)
  CONSUL_HTTP_ADDR="http://127.0.0.1:${ports[0]}" RUST_LOG=warn "$log_bin" \
    --listen "127.0.0.1:$log_port" --data-dir "$data" 2>"$work/log-$n.log" &
  pid=$!
  other_pids+=("$pid")
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$log_port/health" || true)" = 200 ]; do
    kill -0 "$pid" 2>/dev/null || die "log-service exited (see $work/log-$n.log)"
    sleep 0.05
  done
  open_s=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  rss_open=$(rss_mb "$pid")
  url="http://127.0.0.1:$log_port/log"
  say "$n: GET newest"; newest=$(measure "$url?limit=50")
  say "$n: GET rare"; rare=$(measure "$url?service=rare&limit=50")
  say "$n: POST durable"; post=$(measure "$url?service=bench" "$work/post-text.lua")
  rss_end=$(rss_mb "$pid")
  printf '%-9s %7s %6s %6s  %-30s %-30s %-30s\n' "$n" "$open_s" "$rss_open" "$rss_end" \
    "$newest" "$rare" "$post"
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
done
say "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
