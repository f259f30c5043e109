#!/usr/bin/env bash
# Builds every image docker-compose.yml needs without an image registry, from Debian's packages
# and this machine's release build, then points the compose file at them through .env.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: scripts/images.sh [--bases | --debug-binaries] [--help]

Builds, without pulling anything from an image registry:
  gradebook-base:bookworm  a Debian bookworm base: debootstrap --variant=minbase (with curl) from
                           the Debian mirror this machine's APT sources already name, brought in
                           with `docker import`. Needs root and debootstrap (installed if missing).
  gradebook-consul:VERSION the agent scripts/install-consul.sh provides, on that base.
  $GRADEBOOK_IMAGE         (default gradebook:latest) the three service binaries from
                           `cargo build --release`, on that base: the Dockerfile's `prebuilt` stage.
  gradebook-postgres:15    Debian's postgresql on a minbase of its own (for
                           docker-compose.cluster.yml), with docker/postgres-entrypoint.
  gradebook-prometheus:bullseye
                           Debian bullseye's prometheus (2.24) on a bullseye minbase of its own
                           (docker/prometheus.Dockerfile). Bullseye's, because bookworm's (2.42) is
                           built without Consul service discovery (it refuses consul_sd_configs),
                           and compose's Prometheus finds its targets through Consul.
and writes CONSUL_IMAGE=gradebook-consul:VERSION, POSTGRES_IMAGE=gradebook-postgres:15 and
PROMETHEUS_IMAGE=gradebook-prometheus:bullseye into .env beside the compose files, so that
`docker compose up -d --no-build` (or docker-compose, and either with -f
docker-compose.cluster.yml) runs on these images.

--bases builds only the three debootstrap bases (mostly downloads: scripts/test.sh runs it
alongside the tests).
--debug-binaries puts the debug build (target/debug, `cargo build`) in $GRADEBOOK_IMAGE instead
of the release build: what scripts/test.sh does, since its compose tests check how the parts fit
together, not speed, and the debug binaries are already built for the other tests (a release
build costs about 7 minutes on a fresh 2-core machine). Never for images people run.

Quick when nothing changed: the bases are reused while their package lists are the same, the other two
are cached layer by layer, and cargo rebuilds only what changed.
The release binaries must run on bookworm's C library (glibc 2.36): build on bookworm or older.

Environment:
  GRADEBOOK_IMAGE   tag of the service image (default gradebook:latest)
  BASE_PACKAGES     packages added to the minbase base (default: curl ca-certificates)
TXT
}

bases_only=false
profile=release
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --bases) bases_only=true ;;
  --debug-binaries) profile=debug ;;
  "") ;;
  *) usage >&2; exit 2 ;;
esac

die() { echo "images: $*" >&2; exit 1; }
say() { echo "images: $*" >&2; }

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

base_image=gradebook-base:bookworm
service_image=${GRADEBOOK_IMAGE:-gradebook:latest}
base_packages=${BASE_PACKAGES:-curl ca-certificates}
postgres_base_image=gradebook-postgres-base:bookworm
postgres_image=gradebook-postgres:15
prometheus_base_image=gradebook-prometheus-base:bullseye
prometheus_image=gradebook-prometheus:bullseye
build_dir="$repo_root/tools/images"

docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed); start dockerd"

# --- the Debian bases --------------------------------------------------------------------------
# debootstrap_image TAG PACKAGES [SUITE]: a minbase of Debian SUITE (default bookworm) with
# PACKAGES, imported as TAG and labelled with what it was made from; the same label means the same
# image, so it is kept.
debootstrap_image() {
  local tag=$1 packages=$2 suite=${3:-bookworm}
  local recipe="$suite minbase +${packages// /,}"
  local existing
  existing=$(docker image inspect -f '{{ index .Config.Labels "org.gradebook.recipe" }}' "$tag" 2>/dev/null || true)
  if [ "$existing" = "$recipe" ]; then
    say "$tag is up to date ($recipe)"
    return
  fi
  [ "$(id -u)" = 0 ] || die "debootstrap needs root to build $tag; run: sudo $0"
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  local mirror rootfs="$build_dir/rootfs-${tag//[:\/]/-}"
  mirror=$(scripts/debian-mirror.sh) || die "no Debian mirror to debootstrap from"
  rm -rf "$rootfs"
  mkdir -p "$rootfs"
  say "debootstrap $suite +$packages from $mirror (about 2 minutes the first time)"
  debootstrap --variant=minbase --include="${packages// /,}" "$suite" "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 \
    || die "debootstrap failed; see $rootfs.log"
  # Downloaded packages and package lists are of no use inside an image that never runs apt.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -c . \
    | docker import \
        --change "LABEL org.gradebook.recipe=\"$recipe\"" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        - "$tag" >/dev/null
  rm -rf "$rootfs"
  say "built $tag"
}

mkdir -p "$build_dir"
debootstrap_image "$base_image" "$base_packages"
# PostgreSQL for docker-compose.cluster.yml, from Debian's own package.
debootstrap_image "$postgres_base_image" "postgresql"
# Prometheus for docker-compose.yml, from Debian's own package: bullseye's, the last built with
# Consul service discovery (bookworm's refuses consul_sd_configs).
debootstrap_image "$prometheus_base_image" "prometheus" bullseye
if [ "$bases_only" = true ]; then
  exit 0
fi

# --- Consul ----------------------------------------------------------------------------------
consul_bin=$(scripts/install-consul.sh)
consul_version=$("$consul_bin" version | sed -n '1s/^Consul v\([0-9][0-9.]*\).*/\1/p')
[ -n "$consul_version" ] || die "cannot read the version of $consul_bin"
consul_image="gradebook-consul:$consul_version"
consul_context="$build_dir/consul"
rm -rf "$consul_context"
mkdir -p "$consul_context"
cp "$consul_bin" "$consul_context/consul"
docker build -q --build-arg BASE_IMAGE="$base_image" -t "$consul_image" \
  -f docker/consul.Dockerfile "$consul_context" >/dev/null \
  || die "building $consul_image failed"
say "built $consul_image"

# --- the services ----------------------------------------------------------------------------
if [ "$profile" = release ]; then
  say "cargo build --release (the first build takes several minutes)"
  cargo build --release --locked -p log-service -p grading-service -p portal
else
  # The very command scripts/test.sh builds with (same feature set), so nothing is rebuilt.
  say "cargo build --workspace --bins (debug binaries, for tests only)"
  cargo build --locked --workspace --bins
fi
service_context="$build_dir/service"
rm -rf "$service_context"
mkdir -p "$service_context/docker/prebuilt"
cp docker/gradebook-entrypoint docker/gradebook-health "$service_context/docker/"
target_dir=${CARGO_TARGET_DIR:-target}/$profile
cp "$target_dir/log-service" "$target_dir/grading-service" "$target_dir/portal" \
  "$service_context/docker/prebuilt/"
docker build -q --target prebuilt --build-arg BASE_IMAGE="$base_image" -t "$service_image" \
  -f Dockerfile "$service_context" >/dev/null \
  || die "building $service_image failed"
# A host whose C library is newer than bookworm's builds binaries the image cannot run: say so now.
docker run --rm "$service_image" log-service --version >/dev/null \
  || die "the $profile binaries do not run in $service_image (built against a newer glibc than bookworm's?)"
say "built $service_image from the $profile binaries"

# --- PostgreSQL ------------------------------------------------------------------------------
docker build -q --build-arg BASE_IMAGE="$postgres_base_image" -t "$postgres_image" \
  -f docker/postgres.Dockerfile docker >/dev/null \
  || die "building $postgres_image failed"
say "built $postgres_image"

# --- Prometheus ------------------------------------------------------------------------------
docker build -q --build-arg BASE_IMAGE="$prometheus_base_image" -t "$prometheus_image" \
  -f docker/prometheus.Dockerfile docker >/dev/null \
  || die "building $prometheus_image failed"
say "built $prometheus_image"

# --- point the compose files at them ----------------------------------------------------------
env_file="$repo_root/.env"
touch "$env_file"
grep -v -e '^CONSUL_IMAGE=' -e '^POSTGRES_IMAGE=' -e '^PROMETHEUS_IMAGE=' "$env_file" >"$env_file.new" || true
echo "CONSUL_IMAGE=$consul_image" >>"$env_file.new"
echo "POSTGRES_IMAGE=$postgres_image" >>"$env_file.new"
echo "PROMETHEUS_IMAGE=$prometheus_image" >>"$env_file.new"
mv "$env_file.new" "$env_file"
say "wrote CONSUL_IMAGE=$consul_image, POSTGRES_IMAGE=$postgres_image and PROMETHEUS_IMAGE=$prometheus_image to .env; now:"
say "  docker compose up -d --no-build                                  (one host)"
say "  docker compose -f docker-compose.cluster.yml up -d --no-build    (a cluster)"
