# One image with the three service binaries (log-service, grading-service, portal); the compose
# file picks which one a container runs. Two ways to build it from this one file:
#
#   with a registry:    docker compose up --build        (stages `deps`, `build`, then `runtime`)
#   without a registry: scripts/images.sh                (stage `prebuilt`: the host's release
#                       binaries on a Debian base made by debootstrap; never reaches the Rust stages)
#
# The classic builder (docker-compose v1, docker without BuildKit) builds every stage up to the
# target, in file order: so `prebuilt` comes before the Rust stages, and builds from either context.

ARG BASE_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1-bookworm

# What every service container needs at run time: curl for the health check, a non-root user,
# and data directories that user owns (named volumes start as a copy of them, ownership included).
FROM ${BASE_IMAGE} AS runtime-base
RUN if ! command -v curl >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && useradd --system --uid 10001 --home-dir /var/lib/gradebook --shell /usr/sbin/nologin gradebook \
 && mkdir -p /var/lib/gradebook/log /var/lib/gradebook/grading \
 && chown -R gradebook:gradebook /var/lib/gradebook
COPY docker/gradebook-entrypoint docker/gradebook-health /usr/local/bin/
USER gradebook
WORKDIR /var/lib/gradebook
# log, portal, grading.
EXPOSE 4000 5000 6100
# The port comes from the running binary (or GRADEBOOK_LISTEN), so one image serves all three.
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 CMD ["gradebook-health"]
ENTRYPOINT ["gradebook-entrypoint"]
CMD ["--help"]

# The host's release build: scripts/images.sh sends a context of its own with the three binaries
# in docker/prebuilt/. The classic builder builds this stage on the way to `runtime` too; from
# the repository, where that folder holds only its README, it is quick and unused.
FROM runtime-base AS prebuilt
COPY docker/prebuilt/ /usr/local/bin/

# Dependencies in their own layer: the manifests with empty sources, so a change to the code
# reuses the compiled crates.io dependencies.
FROM ${RUST_IMAGE} AS deps
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY services/bench/Cargo.toml services/bench/
COPY services/discovery/Cargo.toml services/discovery/
COPY services/runtime/Cargo.toml services/runtime/
COPY services/grading/Cargo.toml services/grading/
COPY services/log/Cargo.toml services/log/
COPY services/portal/Cargo.toml services/portal/
COPY services/system-tests/Cargo.toml services/system-tests/
COPY services/testkit/Cargo.toml services/testkit/
RUN for crate in bench discovery grading log portal runtime system-tests testkit; do \
      mkdir -p services/$crate/src && touch services/$crate/src/lib.rs; \
    done \
 && for bin in grading log portal; do echo 'fn main() {}' > services/$bin/src/main.rs; done \
 && mkdir -p services/system-tests/src/bin/faults \
 && echo 'fn main() {}' > services/system-tests/src/bin/faults/main.rs \
 && cargo build --release --locked -p log-service -p grading-service -p portal

# Only the three service binaries (not the tests, benchmarks or fault runner).
FROM deps AS build
COPY services services
# The copied sources may be older than the empty ones built above; cargo compares times.
RUN find services -name '*.rs' -exec touch {} + \
 && cargo build --release --locked -p log-service -p grading-service -p portal \
 && mkdir /out \
 && cp target/release/log-service target/release/grading-service target/release/portal /out/

# The default target: what `docker compose up --build` runs.
FROM runtime-base AS runtime
COPY --from=build /out/ /usr/local/bin/
