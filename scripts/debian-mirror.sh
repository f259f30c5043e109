#!/usr/bin/env bash
# Prints the URI of the Debian archive mirror this machine's APT sources already use: the first
# source that serves a plain Debian suite (not a security or third-party repository), from
# deb822 .sources files or one-line sources.list entries. Used to fetch Debian packages without
# naming any mirror in this repository.
set -euo pipefail

case "${1:-}" in
  -h|--help)
    echo "Usage: scripts/debian-mirror.sh   prints the Debian mirror URI from /etc/apt/sources.list{,.d}"
    exit 0 ;;
esac

find_debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      BEGIN { RS=""; FS="\n" }
      {
        uri=""; suites=""; enabled=1
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)    { sub(/^URIs:[ \t]*/, "", $i); split($i, u, /[ \t]+/); uri=u[1] }
          if ($i ~ /^Suites:/)  { sub(/^Suites:[ \t]*/, "", $i); suites=$i }
          if ($i ~ /^Enabled:[ \t]*no/) { enabled=0 }
        }
        if (enabled && uri ~ /\/debian\/?$/ && suites !~ /security/ && suites != "") { print uri; exit }
      }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" {
           uri = ""; for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { uri = $i; break }
           if (uri ~ /\/debian\/?$/) { print uri; exit }
         }' "$f"
  done
}

mirror=$(find_debian_mirror | head -n 1)
if [ -z "$mirror" ]; then
  echo "debian-mirror: no Debian mirror found in /etc/apt/sources.list{,.d}" >&2
  exit 1
fi
echo "$mirror"
