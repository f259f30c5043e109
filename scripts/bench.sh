#!/usr/bin/env bash
# Measures the gradebook on this machine and prints its tables: ceilings of each request shape
# (minimal warp servers), grading, log and portal under wrk, each against the ceiling of its
# shape (the targets again in paired rounds), discovery latencies against a real Consul agent,
# the idle cost of each service (calls to Consul, memory). Benchmarks are not tests: nothing
# fails on a number. Everything runs on loopback and every load is bounded in time.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/bench.sh [--quick]

Builds in release mode, starts a Consul dev agent on free ports, a counting proxy in front of it
for each service, the ceiling servers and the log, grading and portal services, then measures:
  - four ceilings, one per shape of request (services/bench, binary ceiling): a GET of one
    student answered from memory, the same for the whole list (grading's seeded list, four
    times the body), a text POST answered 201, and a GET answered with one pooled HTTP call to
    the GET ceiling (two hops); each is measured first and again last, and the mean is used;
  - the page floors: one pooled call to the grading instance the portal calls (same answer,
    headers and all), the answer decoded and rendered with askama as the portal's student page
    (GET /students/1) or home page (GET /), same markup and size (ceiling --page-from): what a
    portal page costs with no discovery, routing, CSRF cookie, security headers, trace or
    metrics;
  - the durable floor: the same text POST answered 201 only once its line is fsync'd, by one
    writer thread sharing each fsync among the appends waiting (ceiling --durable-dir): what
    durable ingest costs on this disk with nothing else done; the log is reported against it too;
  - each HTTP figure with wrk (Debian's package, installed if missing): 2 threads,
    32 connections, 10 s per figure after a 1 s warm-up, latency percentiles from wrk, and
    the CPU each process spent per request (from /proc/<pid>/stat);
  - each target figure again in paired rounds against its shape's ceiling or floor: base,
    figure, base, figure, base, figure, base, 5 s each; each round's ratio is to the mean of the
    two base runs beside it, and the target is judged on the median of the three, so a slow
    spell of a shared machine weighs on both sides of a ratio alike;
  - discovery: 60 registrations seen by 4 watchers, and 10 SIGKILLs of a grading instance under
    a request loop (services/bench, discovery-bench);
  - idle cost: requests each service makes to Consul over 300 s when nothing changes (one
    full blocking-query wait), and the RSS of each service idle and after the loads.
Prints the tables on stdout (progress on stderr) in about 12 minutes after the build.
Each figure's ratio is to the ceiling of its shape measured in the same run: grading's reads to
the GET ceiling (the list to the list ceiling), the log's POSTs to the POST ceiling (and to the
durable floor), portal pages to the two-hop ceiling (and to their page floors). Only ratios
within one run count. Honours CARGO_TARGET_DIR.

  --quick   2 s loads, one paired round, a 15 s idle window, 10 registrations, 2 kills: to
            try the script out.
TXT
}

quick=false
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --quick) quick=true ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

if $quick; then
  duration=2; idle_window=15; trials=10; kills=2; pair_rounds=1; pair_duration=2
else
  duration=10; idle_window=300; trials=60; kills=10; pair_rounds=3; pair_duration=5
fi
threads=2
connections=32
batch_records=100

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
say() { echo "bench: $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
consul=$(scripts/install-consul.sh)
bench_need_tools wrk curl

say "building in release mode"
cargo build --release --bins >&2
bin="${CARGO_TARGET_DIR:-$root/target}/release"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
bench_warn_if_busy

bench_workdir bench

read -r -a ports <<<"$("$bin/discovery-bench" free-ports 16)"
ceiling_port=${ports[6]} log_port=${ports[7]} grading_port=${ports[8]}
portal_port=${ports[9]} log_proxy=${ports[10]} grading_proxy=${ports[11]} portal_proxy=${ports[12]}
two_hop_port=${ports[13]} floor_port=${ports[14]} page_port=${ports[15]}
bench_start_consul "$consul" bench "${ports[@]:0:6}"
other_pids+=("$consul_pid")

"$bin/discovery-bench" proxy --upstream "$consul_addr" \
  --listen "log=127.0.0.1:$log_proxy" --listen "grading=127.0.0.1:$grading_proxy" \
  --listen "portal=127.0.0.1:$portal_proxy" 2>"$work/proxy.log" &
other_pids+=($!)
"$bin/ceiling" --listen "127.0.0.1:$ceiling_port" 2>"$work/ceiling.log" &
other_pids+=($!)
ceiling_pid=$!
"$bin/ceiling" --listen "127.0.0.1:$two_hop_port" --two-hop-to "http://127.0.0.1:$ceiling_port" \
  2>"$work/two-hop.log" &
other_pids+=($!)
two_hop_pid=$!
# The page floor calls the grading instance the portal calls: both parse the same answer, headers
# and all, so the floor differs from the portal only by what the portal does on top.
"$bin/ceiling" --listen "127.0.0.1:$page_port" --page-from "http://127.0.0.1:$grading_port" \
  2>"$work/page.log" &
other_pids+=($!)
page_pid=$!
"$bin/ceiling" --listen "127.0.0.1:$floor_port" --durable-dir "$work/floor" 2>"$work/floor.log" &
other_pids+=($!)
floor_pid=$!
wait_200 "http://127.0.0.1:$log_proxy/_bench/counts" 10

# start NAME BINARY PORT PROXY_PORT [args...]: a service whose Consul calls go through its proxy.
declare -A pid_of
start() {
  local name=$1 binary=$2 port=$3 proxy=$4
  shift 4
  CONSUL_HTTP_ADDR="http://127.0.0.1:$proxy" "$bin/$binary" --listen "127.0.0.1:$port" "$@" \
    2>"$work/$name.log" &
  services_pids+=($!)
  pid_of[$name]=$!
}
start log log-service "$log_port" "$log_proxy" --data-dir "$work/log"
start grading grading-service "$grading_port" "$grading_proxy" --data-dir "$work/grading"
wait_200 "http://127.0.0.1:$log_port/health" 20
wait_200 "http://127.0.0.1:$grading_port/health" 20
start portal portal "$portal_port" "$portal_proxy"
wait_200 "http://127.0.0.1:$portal_port/students/1" 20
wait_200 "http://127.0.0.1:$ceiling_port/students/1" 10
wait_200 "http://127.0.0.1:$two_hop_port/students/1" 10
wait_200 "http://127.0.0.1:$page_port/students/1" 10
wait_200 "http://127.0.0.1:$floor_port/students/1" 10

rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
counts() { curl -s "http://127.0.0.1:$1/_bench/counts"; }
field() { sed -n "s/.*\b$2=\([0-9]*\).*/\1/p" <<<"$1"; }

# --- Idle: nothing changes in Consul; count each service's calls to it. ---------------------
say "idle window: ${idle_window}s"
sleep 5
declare -A before after
for s in log grading portal; do
  case $s in log) p=$log_proxy ;; grading) p=$grading_proxy ;; portal) p=$portal_proxy ;; esac
  before[$s]=$(counts "$p")
done
sleep "$idle_window"
declare -A rss_idle idle_line
for s in log grading portal; do
  case $s in log) p=$log_proxy ;; grading) p=$grading_proxy ;; portal) p=$portal_proxy ;; esac
  after[$s]=$(counts "$p")
  rss_idle[$s]=$(rss_mb "${pid_of[$s]}")
  line=""
  for kind in total watch own_entry register other; do
    n=$(( $(field "${after[$s]}" "$kind") - $(field "${before[$s]}" "$kind") ))
    # Per minute, from a window of idle_window seconds.
    per_min=$(awk -v n="$n" -v w="$idle_window" 'BEGIN { printf "%.2f", n * 60 / w }')
    line+="$kind=$per_min "
  done
  idle_line[$s]=$line
done

# --- HTTP figures with wrk. ------------------------------------------------------------------
cat >"$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.0f %.0f %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
LUA
{
  echo 'wrk.method = "POST"'
  echo 'wrk.headers["Content-Type"] = "text/plain"'
  echo 'wrk.body = "bench: one durable record from wrk"'
  cat "$work/report.lua"
} >"$work/post-text.lua"
{
  echo 'wrk.method = "POST"'
  echo 'wrk.headers["Content-Type"] = "application/json"'
  printf 'local records = {}\nfor i = 1, %d do records[i] = string.format([[{"service":"bench","level":"info","message":"batch record %%d"}]], i) end\n' "$batch_records"
  echo 'wrk.body = "{\"records\":[" .. table.concat(records, ",") .. "]}"'
  cat "$work/report.lua"
} >"$work/post-batch.lua"

declare -A rps p50 p99 errs cpu_per_request
declare -A pid_by_name=([ceiling]=$ceiling_pid [two_hop]=$two_hop_pid [page]=$page_pid [floor]=$floor_pid \
  [grading]=${pid_of[grading]} [log]=${pid_of[log]} [portal]=${pid_of[portal]})
hz=$(getconf CLK_TCK)
# CPU time (user + system) a process has used so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# measure KEY URL [SCRIPT]: warm-up, then the measured run; fills rps/p50/p99/errs[KEY], and
# cpu_per_request[KEY] with the CPU each process busy during the run spent per request.
# wrk_result SECONDS URL SCRIPT: one wrk run's RESULT line (see report.lua), or the end of the
# script with wrk's output.
wrk_result() {
  local out
  out=$(wrk -t"$threads" -c"$connections" -d"$1s" --latency -s "$3" "$2" 2>&1) \
    || die "wrk failed on $2: $out"
  grep '^RESULT ' <<<"$out" || die "no result from wrk on $2: $out"
}
measure() {
  local key=$1 url=$2 script=${3:-$work/report.lua} result name spent
  local -A ticks_before
  say "wrk: $key ($url)"
  wrk -t"$threads" -c"$connections" -d1s -s "$script" "$url" >/dev/null 2>&1 || true
  for name in "${!pid_by_name[@]}"; do ticks_before[$name]=$(cpu_ticks "${pid_by_name[$name]}"); done
  result=$(wrk_result "$duration" "$url" "$script")
  read -r _ n us l50 l99 e_io e_status <<<"$result"
  cpu_per_request[$key]=""
  for name in ceiling two_hop page floor portal grading log; do
    spent=$(( $(cpu_ticks "${pid_by_name[$name]}") - ticks_before[$name] ))
    # Below 1 % of a core over the run is background (health checks, watches), not this load.
    if (( spent * 100 > duration * hz )); then
      cpu_per_request[$key]+=$(awk -v t="$spent" -v hz="$hz" -v n="$n" -v name="$name" \
        'BEGIN { printf "%s %.1f  ", name, t / hz * 1e6 / n }')
    fi
  done
  rps[$key]=$(awk -v n="$n" -v us="$us" 'BEGIN { printf "%.0f", n / (us / 1e6) }')
  p50[$key]=$(awk -v x="$l50" 'BEGIN { printf "%.2f", x / 1000 }')
  p99[$key]=$(awk -v x="$l99" 'BEGIN { printf "%.2f", x / 1000 }')
  errs[$key]=$((e_io + e_status))
}
ceiling_url="http://127.0.0.1:$ceiling_port"
grading_url="http://127.0.0.1:$grading_port"
log_url="http://127.0.0.1:$log_port"
portal_url="http://127.0.0.1:$portal_port"
two_hop_url="http://127.0.0.1:$two_hop_port"
page_url="http://127.0.0.1:$page_port"
floor_url="http://127.0.0.1:$floor_port"
# Each shape's figures right after its ceiling, the reads before any durable POST: fsync-heavy
# loads leave the kernel writing back for a while, and a read measured then paid for it
# (grading's GET read 0.60x after the durable floor, 0.82-0.92x beside the ceiling).
settle() { sync; sleep 2; }
measure ceiling "$ceiling_url/students/1"
measure ceiling_list "$ceiling_url/students"
measure grading_one "$grading_url/students/1"
measure grading_all "$grading_url/students"
measure two_hop "$two_hop_url/students/1"
measure page "$page_url/students/1"
measure page_home "$page_url/"
measure portal_index "$portal_url/"
measure portal_student "$portal_url/students/1"
measure ceiling_post "$ceiling_url/log" "$work/post-text.lua"
measure floor_post "$floor_url/log" "$work/post-text.lua"
settle
measure log_text "$log_url/log?service=bench" "$work/post-text.lua"
settle
# The same load while 10 readers long-poll (GET /log?after=..&wait=..) for a service that never
# logs: every append wakes them all, and that must not make appends much dearer.
followers=()
for _ in $(seq 10); do
  curl -s -o /dev/null -m $((duration * 3 + 30)) "$log_url/log?service=nobody&after=0&wait=5m" &
  followers+=($!)
done
measure log_text_followed "$log_url/log?service=bench" "$work/post-text.lua"
kill "${followers[@]}" 2>/dev/null || true
wait "${followers[@]}" 2>/dev/null || true
settle
measure log_batch "$log_url/log" "$work/post-batch.lua"
settle
# The ceilings again, last: ratios use the mean of both, so a drift during the run shows and
# weighs on every figure alike.
measure floor_post_end "$floor_url/log" "$work/post-text.lua"
settle
measure ceiling_end "$ceiling_url/students/1"
measure ceiling_list_end "$ceiling_url/students"
measure ceiling_post_end "$ceiling_url/log" "$work/post-text.lua"
measure two_hop_end "$two_hop_url/students/1"
measure page_end "$page_url/students/1"
measure page_home_end "$page_url/"

# rate URL SCRIPT: the req/s of one wrk run of pair_duration seconds, counting only the answers
# that were not errors, then the number of errors (socket errors and non-2xx/3xx answers): a
# figure answering 503s fast must not read as a figure serving fast.
rate() {
  local result
  result=$(wrk_result "$pair_duration" "$1" "$2")
  awk '{ printf "%.0f %d", ($2 - $7) / ($3 / 1e6), $6 + $7 }' <<<"$result"
}
# paired KEY URL BASE_URL [SCRIPT]: pair_rounds rounds of URL, each between two runs of BASE_URL
# (base, figure, base, figure, ..., base); fills pair_ratios[KEY] with each round's ratio to its
# two bases' mean, pair_median[KEY], and pair_errors[KEY], the errors of all its runs. One 10 s
# run drifts with the machine (the same ceiling reads 0.9x and 1.1x of itself first and last); a
# ratio of neighbours drifts much less.
declare -A pair_ratios pair_median pair_errors
paired() {
  local key=$1 url=$2 base_url=$3 script=${4:-$work/report.lua} before after figure ratios=()
  local errors=0 e
  say "paired rounds: $key ($url against $base_url)"
  read -r before e <<<"$(rate "$base_url" "$script")"
  errors=$((errors + e))
  for _ in $(seq "$pair_rounds"); do
    read -r figure e <<<"$(rate "$url" "$script")"
    errors=$((errors + e))
    read -r after e <<<"$(rate "$base_url" "$script")"
    errors=$((errors + e))
    ratios+=("$(awk -v f="$figure" -v a="$before" -v b="$after" 'BEGIN { printf "%.2f", 2 * f / (a + b) }')")
    before=$after
  done
  pair_errors[$key]=$errors
  pair_ratios[$key]="${ratios[*]}"
  pair_median[$key]=$(printf '%s\n' "${ratios[@]}" | sort -n \
    | awk '{ v[NR] = $1 } END { printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
}
paired grading_one "$grading_url/students/1" "$ceiling_url/students/1"
paired grading_all "$grading_url/students" "$ceiling_url/students"
paired portal_student "$portal_url/students/1" "$page_url/students/1"
paired portal_index "$portal_url/" "$page_url/"
settle
paired log_text "$log_url/log?service=bench" "$floor_url/log" "$work/post-text.lua"
declare -A ceiling_of=(
  [get]=$(( (rps[ceiling] + rps[ceiling_end]) / 2 ))
  [list]=$(( (rps[ceiling_list] + rps[ceiling_list_end]) / 2 ))
  [post]=$(( (rps[ceiling_post] + rps[ceiling_post_end]) / 2 ))
  [two_hop]=$(( (rps[two_hop] + rps[two_hop_end]) / 2 ))
  [page]=$(( (rps[page] + rps[page_end]) / 2 ))
  [page_home]=$(( (rps[page_home] + rps[page_home_end]) / 2 ))
  [durable]=$(( (rps[floor_post] + rps[floor_post_end]) / 2 ))
)
declare -A rss_load
for s in log grading portal; do rss_load[$s]=$(rss_mb "${pid_of[$s]}"); done
# What one durable append costs on this disk, for reading the log figures: 200 O_DSYNC writes.
dsync_ms=$(dd if=/dev/zero of="$work/dsync.test" bs=128 count=200 oflag=dsync 2>&1 \
  | awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") { printf "%.2f", $(i - 1) * 1000 / 200 } }')
ceiling_bytes=$(curl -s "$ceiling_url/students/1" | wc -c)
grading_bytes=$(curl -s "$grading_url/students/1" | wc -c)
ceiling_list_bytes=$(curl -s "$ceiling_url/students" | wc -c)
page_bytes=$(curl -s "$page_url/students/1" | wc -c)
page_home_bytes=$(curl -s "$page_url/" | wc -c)
portal_home_bytes=$(curl -s "$portal_url/" | wc -c)
portal_page_bytes=$(curl -s "$portal_url/students/1" | wc -c)
grading_list_bytes=$(curl -s "$grading_url/students" | wc -c)

# --- Discovery. ----------------------------------------------------------------------------
say "discovery: $trials registrations, $kills SIGKILLs"
disco=$("$bin/discovery-bench" visibility --consul "$consul_addr" --trials "$trials" --watchers 4)
disco+=$'\n'$("$bin/discovery-bench" kill --consul "$consul_addr" \
  --grading-bin "$bin/grading-service" --trials "$kills" --watchers 4 --clients 4)
d() { awk -v k="$1" '$1 == k { print $2 }' <<<"$disco"; }

# --- The table. ----------------------------------------------------------------------------
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
verdict() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { print (a / b >= t ? "met" : "missed") }'; }
row() { printf '| %-44s | %10s | %8s | %8s | %-7s | %7s | %-14s |\n' "$@"; }
http_row() { # KEY LABEL SHAPE TARGET_RATIO [MULTIPLIER]; SHAPE is get, list, post, two_hop, page, page_home or durable
  local key=$1 label=$2 shape=$3 target=$4 mult=${5:-1} value base
  value=$((rps[$key] * mult))
  base=${ceiling_of[$shape]}
  local tgt="-"
  [ "$target" != - ] && tgt=">= ${target}x: $(verdict "$value" "$base" "$target")"
  row "$label" "$value" "${p50[$key]}" "${p99[$key]}" "${shape/_/-}" "$(ratio "$value" "$base")" "$tgt"
}

echo "gradebook bench, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes')"
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), Linux $(uname -r); wrk on the same cores"
echo "load average before: $load_start, after: $load_end; other compiler processes at start: $busy; Consul: $("$consul" version | head -n 1)"
echo "wrk -t$threads -c$connections -d${duration}s --latency, loopback; ratios to the mean ceiling of each figure's shape: get ${ceiling_of[get]}, list ${ceiling_of[list]}, post ${ceiling_of[post]}, two-hop ${ceiling_of[two_hop]}, page ${ceiling_of[page]}, home page ${ceiling_of[page_home]}, durable (floor) ${ceiling_of[durable]} req/s"
echo "ceiling body ${ceiling_bytes} B, grading /students/1 body ${grading_bytes} B; ceiling list ${ceiling_list_bytes} B, grading /students ${grading_list_bytes} B; page floor ${page_bytes} B, portal /students/1 ${portal_page_bytes} B; home page floor ${page_home_bytes} B, portal / ${portal_home_bytes} B"
echo "disk: one 128-byte O_DSYNC append takes ${dsync_ms:-?} ms on average (dd, 200 writes), the floor of a durable acknowledgement"
echo
row "figure" "req/s" "p50 ms" "p99 ms" "shape" "x shape" "target"
row "---" "---:" "---:" "---:" "---" "---:" "---"
http_row ceiling "1. ceiling GET /students/1 (warp, memory)" get -
http_row ceiling_end "1. the same, after the other loads" get -
http_row ceiling_list "1. ceiling GET /students (warp, memory)" list -
http_row ceiling_list_end "1. the same, after the other loads" list -
http_row ceiling_post "1. ceiling POST /log text, answered 201" post -
http_row ceiling_post_end "1. the same, after the other loads" post -
http_row two_hop "1. ceiling GET via one pooled call to it" two_hop -
http_row two_hop_end "1. the same, after the other loads" two_hop -
http_row page "1. floor: the same call, decoded and rendered" page -
http_row page_end "1. the same, after the other loads" page -
http_row page_home "1. floor: the home page, the same way" page_home -
http_row page_home_end "1. the same, after the other loads" page_home -
http_row floor_post "1. floor POST /log text, fsync'd (group commit)" post -
http_row floor_post_end "1. the same, after the other loads" post -
http_row grading_one "2. grading GET /students/1" get 0.9
http_row grading_all "2. grading GET /students" list 0.9
http_row grading_all "2. the same, against the one-student ceiling" get -
http_row log_text "3. log POST /log text, fsync'd (records/s)" post 0.7
http_row log_text "3. the same, against the durable floor" durable 0.7
http_row log_text_followed "3. the same, 10 readers waiting on ?wait" post -
http_row log_batch "3. log POST /log batch of $batch_records (records/s)" post 0.7 "$batch_records"
http_row portal_index "4. portal / (via discovery)" two_hop 0.9
http_row portal_student "4. portal /students/1 (via discovery)" two_hop 0.9
http_row portal_index "4. portal /, against its page floor" page_home 0.9
http_row portal_student "4. portal /students/1, against its page floor" page 0.9
echo
prow() { printf '| %-44s | %-20s | %-16s | %6s | %6s | %-14s |\n' "$@"; }
pair_row() { # KEY LABEL AGAINST TARGET
  local verdict
  verdict=$(awk -v m="${pair_median[$1]}" -v t="$4" 'BEGIN { print (m >= t ? "met" : "missed") }')
  # Errors in any run of the rounds make the ratios unsound, whichever side answered them.
  (( pair_errors[$1] == 0 )) || verdict="not judged (errors)"
  prow "$2" "$3" "${pair_ratios[$1]}" "${pair_median[$1]}x" "${pair_errors[$1]}" ">= ${4}x: $verdict"
}
prow "target figure, paired rounds (${pair_duration}s each)" "against" "round ratios" "median" "errors" "target"
prow "---" "---" "---" "---:" "---:" "---"
pair_row grading_one "2. grading GET /students/1" "GET ceiling" 0.9
pair_row grading_all "2. grading GET /students" "list ceiling" 0.9
pair_row log_text "3. log POST /log text, fsync'd" "durable floor" 0.7
pair_row portal_index "4. portal /" "home page floor" 0.9
pair_row portal_student "4. portal /students/1" "student page floor" 0.9
echo
echo "CPU per request in us (user + system of each process, /proc/<pid>/stat over the measured run;"
echo "wrk's own share is not counted; per record for the log figures divide by records per request):"
for key in ceiling ceiling_list ceiling_post two_hop page page_home floor_post grading_one \
  grading_all log_text log_text_followed log_batch portal_index portal_student ceiling_end \
  ceiling_list_end ceiling_post_end two_hop_end page_end page_home_end floor_post_end; do
  printf '  %-15s %s\n' "$key" "${cpu_per_request[$key]}"
done
echo
drow() { printf '| %-44s | %10s | %8s | %8s | %7s | %-22s |\n' "$@"; }
drow "discovery ($(d visibility_watchers) watchers)" "trials" "p50 ms" "p99 ms" "max ms" "target"
drow "---" "---:" "---:" "---:" "---:" "---"
vis_p99=$(d visible_p99_ms)
drow "5. registered -> in every watcher" "$(d visible_trials)" "$(d visible_p50_ms)" "$vis_p99" "$(d visible_max_ms)" \
  "p99 < 50 ms: $(awk -v x="$vis_p99" 'BEGIN { print (x != "" && x < 50 ? "met" : "missed") }')"
drow "5. deregistered -> gone from every watcher" "$(d dropped_graceful_trials)" "$(d dropped_graceful_p50_ms)" "$(d dropped_graceful_p99_ms)" "$(d dropped_graceful_max_ms)" "-"
failed=$(d sigkill_requests_failed)
drow "5. SIGKILL -> gone from every watcher" "$(d dropped_sigkill_trials)" "$(d dropped_sigkill_p50_ms)" "$(d dropped_sigkill_p99_ms)" "$(d dropped_sigkill_max_ms)" "-"
drow "5. requests failed during the SIGKILLs" "$failed of $(( $(d sigkill_requests_ok) + failed ))" "" "" "" \
  "0 failed: $([ "$failed" = 0 ] && echo met || echo missed)"
echo "(timeouts: visibility $(d visibility_timeouts), sigkill $(d sigkill_timeouts); errors reported by wrk: $(for k in "${!errs[@]}"; do printf '%s=%s ' "$k" "${errs[$k]}"; done))"
echo
printf '| %-8s | %-60s | %9s | %11s |\n' "service" "Consul calls per minute, idle (${idle_window}s window)" "RSS idle" "RSS loaded"
printf '| %-8s | %-60s | %9s | %11s |\n' "---" "---" "---:" "---:"
for s in log grading portal; do
  printf '| %-8s | %-60s | %6s MB | %8s MB |\n' "$s" "${idle_line[$s]}" "${rss_idle[$s]}" "${rss_load[$s]}"
done
echo "(6. target: RSS idle < 20 MB: $(for s in log grading portal; do awk -v s="$s" -v x="${rss_idle[$s]}" 'BEGIN { printf "%s %s ", s, (x < 20 ? "met" : "missed") }'; done))"
