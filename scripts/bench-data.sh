#!/usr/bin/env bash
# How the gradebook's cost grows with its data: the same requests measured over 1x, 10x and 100x
# data, each on a fresh store. Benchmarks are not tests: nothing fails on a number. Everything
# runs on loopback against a real Consul dev agent, and every load is bounded in time.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/bench-data.sh [--quick] [--scales "1 10 100"] [--bin DIR]

Builds in release mode (unless --bin is given), starts a Consul dev agent on free ports, then
for each scale seeds a fresh store and measures with wrk (Debian's package, installed if
missing; 2 threads, 32 connections, 10 s per figure after a 1 s warm-up):

  grading and portal (grading_portal): grading seeded with 100 students and 2,000 grades per
  scale unit (20 grades each; 100x = 10,000 students and 200,000 grades), written straight into
  its SQLite file while it is stopped. Measures grading's GET /students (the whole list),
  GET /students?limit=51 (a page, first and last), GET /students/{id}, and the portal's home
  page (first and last page) and a student's page, each with the body's size. Paged figures
  are left out when the build does not page (an older build given with --bin).

Prints one table per part on stdout (progress on stderr).

  --quick       2 s loads, scales "1 10": to try the script out.
  --scales S    the scales to run, e.g. "1 100".
  --bin DIR     take grading-service, portal and discovery-bench from DIR instead of building
                (to measure an older build the same way).
TXT
}

quick=false
scales=""
bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --quick) quick=true ;;
    --scales) scales=${2:?--scales needs a value}; shift ;;
    --bin) bin=${2:?--bin needs a directory}; shift ;;
    *) usage >&2; exit 2 ;;
  esac
  shift
done
if $quick; then
  duration=2; scales=${scales:-"1 10"}
else
  duration=10; scales=${scales:-"1 10 100"}
fi
threads=2
connections=32

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
say() { echo "bench-data: $*" >&2; }
die() { echo "bench-data: $*" >&2; exit 1; }

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
consul=$(scripts/install-consul.sh)
bench_need_tools wrk sqlite3 curl

if [ -z "$bin" ]; then
  say "building in release mode"
  cargo build --release -p grading-service -p portal -p bench >&2
  bin="${CARGO_TARGET_DIR:-$root/target}/release"
fi
bin=$(cd "$bin" && pwd)
bench_warn_if_busy

bench_workdir bench-data

read -r -a ports <<<"$("$bin/discovery-bench" free-ports 9)"
grading_port=${ports[6]} portal_port=${ports[7]}
bench_start_consul "$consul" bench-data "${ports[@]:0:6}"
other_pids+=("$consul_pid")

# start NAME BINARY PORT [args...]: a service on PORT, registered with the bench's agent.
declare -A pid_of
start() {
  local name=$1 binary=$2 port=$3
  shift 3
  CONSUL_HTTP_ADDR="$consul_addr" "$bin/$binary" --listen "127.0.0.1:$port" "$@" \
    2>>"$work/$name.log" &
  services_pids+=($!)
  pid_of[$name]=$!
}
# stop NAME: SIGTERM (deregister, drain) and wait.
stop() {
  local pid=${pid_of[$1]}
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local kept=() p
  for p in "${services_pids[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  services_pids=("${kept[@]}")
}

cat >"$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.0f %.0f %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
LUA

row() { printf '| %-40s | %5s | %9s | %8s | %8s | %8s | %6s |\n' "$@"; }
# measure SCALE LABEL URL: one table row, after a 1 s warm-up.
measure() {
  local scale=$1 label=$2 url=$3 out result n us l50 l99 e_io e_status bytes
  say "${scale}x: $label ($url)"
  bytes=$(curl -s "$url" | wc -c)
  wrk -t"$threads" -c"$connections" -d1s -s "$work/report.lua" "$url" >/dev/null 2>&1 || true
  out=$(wrk -t"$threads" -c"$connections" -d"${duration}s" --timeout 30s -s "$work/report.lua" \
    "$url" 2>&1) || die "wrk failed on $url: $out"
  result=$(grep '^RESULT ' <<<"$out") || die "no result from wrk on $url: $out"
  read -r _ n us l50 l99 e_io e_status <<<"$result"
  row "$label" "${scale}x" "$bytes" \
    "$(awk -v n="$n" -v us="$us" 'BEGIN { printf "%.0f", n / (us / 1e6) }')" \
    "$(awk -v x="$l50" 'BEGIN { printf "%.2f", x / 1000 }')" \
    "$(awk -v x="$l99" 'BEGIN { printf "%.2f", x / 1000 }')" "$((e_io + e_status))"
}

# seed_grading DIR STUDENTS GRADES_PER_STUDENT: grading's SQLite file in DIR holding exactly
# these students (ids 1..STUDENTS, names made up) and their grades. Grading creates the schema
# on a first start; the rows go in with sqlite3 while it is stopped (a few seconds for 200,000
# grades, where 200,000 POSTs would each wait for an fsync).
seed_grading() {
  local dir=$1 students=$2 per=$3
  start grading grading-service "$grading_port" --data-dir "$dir"
  wait_200 "http://127.0.0.1:$grading_port/health" 20
  stop grading
  sqlite3 "$dir/grading.sqlite3" <<SQL
PRAGMA foreign_keys = ON;
BEGIN;
DELETE FROM students;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $students)
INSERT INTO students (id, first_name, last_name) SELECT i, 'Student', 'Number ' || i FROM n;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $students * $per - 1)
INSERT INTO grades (student_id, title, type, score)
  SELECT i / $per + 1, 'Assignment ' || (i % $per + 1),
         CASE i % 3 WHEN 0 THEN 'Test' WHEN 1 THEN 'Quiz' ELSE 'Homework' END,
         (i * 37) % 101
  FROM n;
COMMIT;
SQL
}

# Grading and portal over 100 students and 2,000 grades per scale unit.
grading_portal() {
  local scale students per=20 last pages=true grading_url portal_url
  echo "grading and portal over more data: wrk -t$threads -c$connections -d${duration}s, loopback; 1x = 100 students, 2,000 grades"
  echo
  row "figure" "data" "body B" "req/s" "p50 ms" "p99 ms" "errors"
  row "---" "---:" "---:" "---:" "---:" "---:" "---:"
  for scale in $scales; do
    students=$((100 * scale))
    rm -rf "$work/grading"
    seed_grading "$work/grading" "$students" "$per"
    start grading grading-service "$grading_port" --data-dir "$work/grading"
    wait_200 "http://127.0.0.1:$grading_port/health" 20
    start portal portal "$portal_port"
    wait_200 "http://127.0.0.1:$portal_port/students/1" 20
    grading_url="http://127.0.0.1:$grading_port"
    portal_url="http://127.0.0.1:$portal_port"
    # A build that pages answers ?limit=1 with one student; an older one with all of them.
    [ "$(curl -s "$grading_url/students?limit=1" | grep -o '"firstName"' | wc -l)" = 1 ] \
      || pages=false
    # The last page starts after this id (the portal shows 50 a page, asking grading for 51).
    last=$(( (students - 1) / 50 * 50 ))
    measure "$scale" "grading GET /students (all)" "$grading_url/students"
    if $pages; then
      measure "$scale" "grading GET /students?limit=51" "$grading_url/students?limit=51"
      measure "$scale" "grading the same, last page" "$grading_url/students?limit=51&after=$last"
    fi
    measure "$scale" "grading GET /students/{id}" "$grading_url/students/$((students / 2))"
    measure "$scale" "portal / (home page)" "$portal_url/"
    $pages && [ "$last" -gt 0 ] && measure "$scale" "portal /?after=... (last page)" "$portal_url/?after=$last"
    measure "$scale" "portal /students/{id}" "$portal_url/students/$((students / 2))"
    stop portal
    stop grading
  done
  rm -rf "$work/grading"
  $pages || echo "(this build does not page: paged figures left out)"
}

echo "gradebook bench-data, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes'), binaries from $bin"
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1); wrk on the same cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg); other compiler processes: $busy"
echo
grading_portal
