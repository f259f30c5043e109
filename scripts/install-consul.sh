#!/usr/bin/env bash
# Makes a real Consul agent available and prints the path of its binary.
#
# Order of preference:
#   1. a `consul` already on PATH, used as it is;
#   2. one this script unpacked earlier into tools/consul/;
#   3. Debian bullseye's `consul` package (1.8.7), fetched through a temporary APT source that
#      reuses the Debian mirror this machine is already configured with, and unpacked (not
#      installed) into tools/consul/. The machine's own APT configuration is left untouched.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/install-consul.sh [--help]

Prints the absolute path of a working `consul` binary, installing one into
tools/consul/ (git-ignored) when none is on PATH. Idempotent: running it again
reuses what is there. Exits non-zero with a message when it cannot.

Environment:
  CONSUL_SUITE   Debian suite to take the package from (default: bullseye)
TXT
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

die() { echo "install-consul: $*" >&2; exit 1; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools_dir="$repo_root/tools/consul"
unpacked_bin="$tools_dir/usr/bin/consul"
suite="${CONSUL_SUITE:-bullseye}"

if command -v consul >/dev/null 2>&1; then
  command -v consul
  exit 0
fi

if [ -x "$unpacked_bin" ] && "$unpacked_bin" version >/dev/null 2>&1; then
  echo "$unpacked_bin"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "no consul on PATH and no apt-get to fetch one; install Consul and put it on PATH"
command -v dpkg >/dev/null 2>&1 || die "no consul on PATH and no dpkg to unpack one"

# The mirror of the Debian archive this machine already uses, so no mirror is named here.
mirror=$("$repo_root/scripts/debian-mirror.sh") || die "cannot fetch consul from $suite without a Debian mirror"

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || die "missing $keyring (package debian-archive-keyring)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/parts"
echo "deb [signed-by=$keyring] $mirror $suite main" >"$work/sources.list"

# A private APT state: only this one source, its own lists and cache, so nothing on the machine
# changes and the temporary source is gone when the script exits.
apt_opts=(
  -o "Dir::Etc::SourceList=$work/sources.list"
  -o "Dir::Etc::SourceParts=$work/parts"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Get::List-Cleanup=0"
  -o "APT::Sandbox::User=root"
)

echo "install-consul: fetching consul from $suite via $mirror" >&2
apt-get "${apt_opts[@]}" -qq update >&2 || die "apt-get update for $suite failed"
(cd "$work" && apt-get "${apt_opts[@]}" -qq download consul >&2) || die "apt-get download consul failed"
deb=$(ls "$work"/consul_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || die "no consul package was downloaded"

rm -rf "$tools_dir"
mkdir -p "$tools_dir"
dpkg -x "$deb" "$tools_dir"
[ -x "$unpacked_bin" ] || die "the package did not contain usr/bin/consul"
"$unpacked_bin" version >&2 || die "the unpacked consul does not run"
echo "$unpacked_bin"
