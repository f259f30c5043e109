#!/usr/bin/env bash
# Turns the ACL policies of consul/acl/ into one token per service on a Consul agent that
# enforces ACLs, bootstrapping the ACL system first when no management token is given.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/acl-bootstrap.sh --token-dir DIR [--dns-anonymous]

On the Consul agent at CONSUL_HTTP_ADDR (default http://127.0.0.1:8500), which must
run with ACLs enabled (see consul/acl/agent-acl.hcl):
  1. takes the management token from CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN,
     else from DIR/management.token if the agent still knows it, else runs
     `consul acl bootstrap` and keeps the token it gets in DIR/management.token;
  2. creates (or updates) the policies gradebook-log, gradebook-grading and
     gradebook-portal from consul/acl/<service>.hcl;
  3. creates one token per service with its policy only, and writes its secret
     to DIR/<service>.token (mode 0600). A token file that still holds a valid
     token of that policy is kept, so running the script again changes nothing.
Start each service with CONSUL_HTTP_TOKEN_FILE=DIR/<service>.token.

Secrets are written to files only, never printed nor passed on a command line.

  --token-dir DIR   where the token files go (created with mode 0700)
  --dns-anonymous   also create gradebook-dns (read-only: the three services and
                    their nodes) and give it to the anonymous token, so that DNS
                    (dig grading.service.consul) and requests without a token
                    see the services, on every agent. Without it they see nothing.

Environment: CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN (a
management token), CONSUL_BIN (the consul binary; default: scripts/install-consul.sh).
TXT
}

token_dir=
dns_anonymous=false
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --token-dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; token_dir=$2; shift 2 ;;
    --token-dir=*) token_dir=${1#--token-dir=}; shift ;;
    --dns-anonymous) dns_anonymous=true; shift ;;
    *) usage >&2; exit 2 ;;
  esac
done
[ -n "$token_dir" ] || { echo "acl-bootstrap: --token-dir DIR is required" >&2; usage >&2; exit 2; }

die() { echo "acl-bootstrap: $*" >&2; exit 1; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
policy_dir="$repo_root/consul/acl"
consul=${CONSUL_BIN:-$("$repo_root/scripts/install-consul.sh")}
export CONSUL_HTTP_ADDR=${CONSUL_HTTP_ADDR:-http://127.0.0.1:8500}

umask 077
mkdir -p "$token_dir"
chmod 700 "$token_dir"
token_dir=$(cd "$token_dir" && pwd)

# Writes a secret read from stdin to $1 with mode 0600, atomically: a reader never sees half a
# token, and a failed run leaves the previous file.
write_secret() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  chmod 600 "$tmp"
  mv -f "$tmp" "$1"
}

# The value of field $1 ("SecretID", "AccessorID") in the CLI's pretty output on stdin.
field() { awk -v name="$1:" '$1 == name { print $2; exit }'; }

# 1. The management token. The consul CLI reads it from CONSUL_HTTP_TOKEN_FILE (or the
# CONSUL_HTTP_TOKEN it was given), never from its arguments, where `ps` would show it.
can_manage() { "$consul" acl policy list >/dev/null 2>&1; }
if [ -n "${CONSUL_HTTP_TOKEN_FILE:-}" ] || [ -n "${CONSUL_HTTP_TOKEN:-}" ]; then
  echo "management token: the one given in CONSUL_HTTP_TOKEN${CONSUL_HTTP_TOKEN_FILE:+_FILE}"
elif [ -s "$token_dir/management.token" ] \
    && CONSUL_HTTP_TOKEN_FILE="$token_dir/management.token" can_manage; then
  export CONSUL_HTTP_TOKEN_FILE="$token_dir/management.token"
  echo "management token: $CONSUL_HTTP_TOKEN_FILE (bootstrapped by an earlier run)"
else
  # No token, or one the agent no longer knows (a dev agent forgets everything when restarted).
  if ! bootstrap=$("$consul" acl bootstrap 2>&1); then
    die "consul acl bootstrap failed on $CONSUL_HTTP_ADDR: $bootstrap
(already bootstrapped? give the management token in CONSUL_HTTP_TOKEN_FILE)"
  fi
  secret=$(field SecretID <<<"$bootstrap")
  [ -n "$secret" ] || die "consul acl bootstrap printed no SecretID"
  write_secret "$token_dir/management.token" <<<"$secret"
  unset secret bootstrap
  export CONSUL_HTTP_TOKEN_FILE="$token_dir/management.token"
  echo "bootstrapped ACLs on $CONSUL_HTTP_ADDR: management token in $CONSUL_HTTP_TOKEN_FILE (mode 0600; keep it safe, or offline)"
fi
# The management token, whichever way it came, must be able to manage ACLs.
if ! out=$("$consul" acl policy list 2>&1 >/dev/null); then
  die "the management token cannot list ACL policies on $CONSUL_HTTP_ADDR: $out"
fi

# 2. One policy per rules file; updated in place when it exists, so edits to the files apply.
apply_policy() {
  local name=$1 rules=$2 description=$3 out
  if "$consul" acl policy read -name "$name" >/dev/null 2>&1; then
    out=$("$consul" acl policy update -name "$name" -description "$description" -rules "@$rules" 2>&1) \
      || die "cannot update policy $name: $out"
    echo "policy $name: updated from ${rules#"$repo_root"/}"
  else
    out=$("$consul" acl policy create -name "$name" -description "$description" -rules "@$rules" 2>&1) \
      || die "cannot create policy $name: $out"
    echo "policy $name: created from ${rules#"$repo_root"/}"
  fi
}

# 3. One token per service, holding that policy only; its secret goes to a file and nowhere else.
ensure_token() {
  local service=$1 policy=$2 file="$token_dir/$1.token" self created accessor secret
  if [ -s "$file" ] && self=$(CONSUL_HTTP_TOKEN_FILE="$file" CONSUL_HTTP_TOKEN='' \
      "$consul" acl token read -self 2>/dev/null) && grep -q -- " - $policy\$" <<<"$self"; then
    echo "token for $service: kept $file (accessor $(field AccessorID <<<"$self"))"
    return
  fi
  created=$("$consul" acl token create -policy-name "$policy" \
    -description "gradebook $service service" 2>&1) || die "cannot create a token for $service: $created"
  accessor=$(field AccessorID <<<"$created")
  secret=$(field SecretID <<<"$created")
  [ -n "$secret" ] || die "consul acl token create printed no SecretID for $service"
  write_secret "$file" <<<"$secret"
  echo "token for $service: created (accessor $accessor, policy $policy), secret in $file (mode 0600)"
}

for service in log grading portal; do
  apply_policy "gradebook-$service" "$policy_dir/$service.hcl" \
    "gradebook $service: register itself, read its dependencies"
done
for service in log grading portal; do
  ensure_token "$service" "gradebook-$service"
done

# The anonymous token is what DNS and token-less requests use (unless an agent has its own
# default token); its ID is well known, so attaching a policy to it puts no secret anywhere.
anonymous=00000000-0000-0000-0000-000000000002
if $dns_anonymous; then
  apply_policy gradebook-dns "$policy_dir/dns.hcl" "gradebook: what DNS and requests without a token may see"
  out=$("$consul" acl token update -id "$anonymous" -policy-name gradebook-dns -merge-policies \
    -description "Anonymous Token" 2>&1) || die "cannot give the anonymous token gradebook-dns: $out"
  echo "anonymous token: has gradebook-dns (DNS and requests without a token see log, grading, portal)"
else
  echo "anonymous token: unchanged (under default_policy deny DNS answers nothing; see --dns-anonymous)"
fi
echo "start each service with CONSUL_HTTP_TOKEN_FILE=$token_dir/<service>.token"
