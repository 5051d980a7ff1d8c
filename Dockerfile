# syntax=docker/dockerfile:1
#
# wsgate container image: build with `docker build -t wsgate .` (or podman) from the
# repository root. `scripts/check-image` builds it and runs it read-only as uid 65532,
# checking a WebSocket session, a gRPC call, the health check and the size (at most 40
# MB). Build with `--format docker` under podman: the OCI image format has no HEALTHCHECK.
#
# The image listens on 0.0.0.0 (8080 HTTP/WebSocket, 50051 gRPC). wsgate refuses to start
# on non-loopback listeners without authentication, so a container needs either
#   WSGATE__AUTH__MODE=jwt + WSGATE__AUTH__JWT__SECRET (or a public key file)
#   + WSGATE__CONTROL__API_KEYS
# or, for a local try-out only, WSGATE__AUTH__ALLOW_INSECURE=true. It also wants
# WSGATE__REDIS__URL when more than one replica runs. See docs/deploy.md.

# --- planner: a skeleton of the workspace (manifests, lockfile, build scripts and their
# inputs, empty stubs for the crate roots). It changes only when dependencies change, so
# the dependency layer below stays cached across source edits.
FROM rust:1-bookworm AS planner
WORKDIR /src
COPY . .
RUN set -eu; mkdir -p /skeleton; \
    cp Cargo.toml Cargo.lock /skeleton/; \
    cp -r proto /skeleton/proto; \
    find . -path ./target -prune -o \( -name Cargo.toml -o -name build.rs \) -type f -print \
      | while read -r f; do mkdir -p "/skeleton/$(dirname "$f")"; cp "$f" "/skeleton/$f"; done; \
    find . -path ./target -prune -o \( -name main.rs -o -name lib.rs \) -type f -print \
      | while read -r f; do \
          mkdir -p "/skeleton/$(dirname "$f")"; \
          case "$f" in */main.rs) echo 'fn main() {}' > "/skeleton/$f" ;; *) : > "/skeleton/$f" ;; esac; \
        done

# --- builder: dependencies first (cached layer), then the real sources. The crates.io
# registry and target/ live in cache mounts, so a rebuild after a source edit compiles
# only wsgate's own crates even when the layer cache is gone; the binary is copied out of
# the mount in the same step.
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY --from=planner /skeleton/ ./
RUN --mount=type=cache,id=wsgate-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=wsgate-target,target=/src/target \
    cargo build --profile dist --locked -p wsgate
COPY . .
# The git revision `wsgate version` prints: .git is not in the build context, so
# crates/wsgate/build.rs reads it from here (`--build-arg WSGATE_GIT_REVISION=$(git
# rev-parse --short HEAD)`, as scripts/check-image passes it); `unknown` when not given.
# Declared after the dependency build so that a new revision leaves that layer cached.
ARG WSGATE_GIT_REVISION
ENV WSGATE_GIT_REVISION=$WSGATE_GIT_REVISION
# The stubs were built after the sources' timestamps: make cargo rebuild our crates.
RUN --mount=type=cache,id=wsgate-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=wsgate-target,target=/src/target \
    find crates -name '*.rs' -exec touch {} + \
    && cargo build --profile dist --locked -p wsgate \
    && cp target/dist/wsgate /wsgate

# --- runtime: glibc + libgcc, no shell, non-root (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /wsgate /usr/local/bin/wsgate
ENV WSGATE__SERVER__LISTEN=0.0.0.0:8080 \
    WSGATE__SERVER__GRPC_LISTEN=0.0.0.0:50051 \
    WSGATE__TELEMETRY__LOG_FORMAT=json
USER nonroot:nonroot
EXPOSE 8080 50051
# Docker and podman run this in the container (no shell or curl there): it reads the same
# environment as `serve` and GETs /healthz on server.admin_listen, else server.listen
# (127.0.0.1:8080 here), exiting 0 or 1 within its own 2 s timeout. Give a configuration
# file as WSGATE_CONFIG rather than `serve --config FILE` so the check finds it too.
# Kubernetes ignores HEALTHCHECK: the chart has its own probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/wsgate", "health"]
ENTRYPOINT ["/usr/local/bin/wsgate"]
CMD ["serve"]
