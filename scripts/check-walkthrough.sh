#!/usr/bin/env bash
# Replays README.md's walkthrough against a fresh scripts/run-local.sh and compares what each
# command prints with what README shows, so the README cannot drift from what a new user sees.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/check-walkthrough.sh [--can-run | --help]

Starts scripts/run-local.sh on a fresh data/ (there must be none: the walkthrough
starts from one), then runs every one-line `$ curl` and `$ dig` command of README's
"Walkthrough" section up to "Discovery at work", in order, and compares its output
with README's, line by line, after blanking what differs between runs: times and
dates, durations, the Consul node's name, trace ids. Where README trims a line with `…`, its
pieces must appear in that order; a line that is only `…` stands for lines left
out. Prints each difference and exits 1 if there is one. Needs ports 8500, 8600, 4000, 5000 and 6100 free, curl, dig and jq (installed
from Debian's packages when missing and running as root). Leaves data/ removed.
--can-run only tells, by its exit status, whether data/ and the ports allow a run.
TXT
}

only_check=false
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --can-run) only_check=true ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { echo "check-walkthrough: $*" >&2; exit 1; }

[ ! -e data ] || die "data/ exists; the walkthrough starts from a fresh one: move it away first"
for port in 8500 8600 4000 5000 6100; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use; stop what listens there (a running run-local.sh?)"
  fi
done
# --can-run: only say (by the exit status) whether the above allows a run.
"$only_check" && exit 0
if ! command -v jq >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends jq >/dev/null
  else
    die "jq is missing (package jq)"
  fi
fi

output=$(mktemp -d)
runner=
cleanup() {
  if [ -n "$runner" ]; then
    kill -TERM "$runner" 2>/dev/null || true
    wait "$runner" 2>/dev/null || true
  fi
  rm -rf "$output" data
}
trap cleanup EXIT

scripts/run-local.sh >"$output/run-local.log" 2>&1 &
runner=$!
for _ in $(seq 1 1800); do
  grep -q "gradebook is running" "$output/run-local.log" && break
  kill -0 "$runner" 2>/dev/null || { cat "$output/run-local.log" >&2; die "run-local.sh stopped"; }
  sleep 0.2
done
grep -q "gradebook is running" "$output/run-local.log" || die "run-local.sh did not start in 6 minutes"
# The portal's page shows what its watches see: let them settle as a reader's would have.
sleep 1

python3 - README.md <<'PY'
import re, subprocess, sys

text = open(sys.argv[1], encoding="utf-8").read()
start = text.index("\n## Walkthrough")
end = text.index("\n### Discovery at work", start)
section = text[start:end]

def normalize(line):
    line = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>", line)
    line = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<local time>", line)
    line = re.sub(r"^date: .*", "date: <date>", line)
    # A new trace, with random ids, for every request that comes without one.
    line = re.sub(r"^traceparent: 00-[0-9a-f]{32}-[0-9a-f]{16}-", "traceparent: 00-<ids>-", line)
    line = re.sub(r'"trace_id":"[0-9a-f]{32}"', '"trace_id":"<id>"', line)
    line = re.sub(r"\b\d+(\.\d+)? s\b", "<n> s", line)
    line = re.sub(r"[\w-]+\.node\.dc1\.consul\.", "<node>.node.dc1.consul.", line)
    return line.rstrip()

def lines_match(want, got):
    """A line of README that is only `…` stands for any number of lines (at least one)."""
    if "…" not in want:
        return len(want) == len(got) and all(matches(w, g) for w, g in zip(want, got))
    cut = want.index("…")
    head, tail = want[:cut], want[cut + 1:]
    if not lines_match(head, got[:len(head)]):
        return False
    # The tail may itself hold a `…`: try each place it could start.
    return any(lines_match(tail, got[start:]) for start in range(len(head) + 1, len(got) + 1))

def matches(expected, actual):
    if "…" not in expected:
        return expected == actual
    at = 0
    for piece in expected.split("…"):
        found = actual.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
    return True

failures = 0
commands = 0
for block in re.findall(r"```console\n(.*?)```", section, re.S):
    lines = block.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not (line.startswith("$ curl") or line.startswith("$ dig")):
            continue
        expected = []
        while i < len(lines) and not lines[i].startswith("$ "):
            expected.append(lines[i])
            i += 1
        while expected and expected[-1] == "":
            expected.pop()
        command = line[2:]
        commands += 1
        run = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
        actual = run.stdout.replace("\r\n", "\n").rstrip("\n").split("\n")
        want = [normalize(l) for l in expected]
        got = [normalize(l) for l in actual]
        while got and got[-1] == "":
            got.pop()
        if not lines_match(want, got):
            failures += 1
            print(f"--- {command}\n    README:", *want, "    now:", *got, sep="\n    ")
print(f"check-walkthrough: {commands} commands replayed, {failures} differ from README")
sys.exit(1 if failures or commands == 0 else 0)
PY
