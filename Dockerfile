# syntax=docker/dockerfile:1
#
# kvserve container image: build with cargo, run on distroless (glibc, no shell).
#
#   docker build -t kvserve:latest .
#   docker run --rm -p 8000:8000 -p 9000:9000 --read-only kvserve:latest
#
# The base images are build arguments, so a machine that cannot pull them can substitute
# its own: `./runner.sh image` builds this file unchanged with buildah from Debian-made
# bases (tests/image/check.sh), then runs the image and checks it.
#
# The image serves the bundled sample (/srv/kvserve/data/sample.data). In Kubernetes the
# real data file comes from a volume and KVSERVE_DATA points at it (k8s/base).
# Health is checked by Kubernetes probes (/livez, /readyz on port 9000), so the image has
# no HEALTHCHECK; checkov's CKV_DOCKER_2 is skipped for that reason (see below).
# checkov:skip=CKV_DOCKER_2:Kubernetes startup/readiness/liveness probes on /readyz and /livez replace a Docker HEALTHCHECK (distroless has no curl to run one)
# checkov reads `FROM ${BUILDER_IMAGE}` as an untagged image; the defaults below are tagged.
# checkov:skip=CKV_DOCKER_7:the base images are build arguments whose defaults are version-tagged (rust:1.95-bookworm, gcr.io/distroless/cc-debian12:nonroot)

# rust-version is 1.91 (Cargo.lock's notify-types needs it); 1.95 is the toolchain of
# BENCHMARKS.md. Bookworm, to match the glibc (2.36) of distroless/cc-debian12:
# a binary built on a newer Debian may need glibc symbols the runtime lacks, so a
# substituted builder needs a runtime with at least its glibc. The builder must keep
# cargo's home at /usr/local/cargo (as the rust images do) for the registry cache below.
ARG BUILDER_IMAGE=rust:1.95-bookworm
# distroless/cc: glibc + libgcc (kvserve links glibc dynamically), no shell, and the
# `nonroot` tag runs as uid/gid 65532.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

############################ builder ############################
FROM ${BUILDER_IMAGE} AS builder
WORKDIR /build
# The cargo profile of the build: `release` for every image that ships. The image check
# (tests/image/check.sh) passes `image-check` (Cargo.toml: no optimiser), since it
# proves the image's wiring, not its speed, and the optimised build was most of CI's time.
ARG CARGO_PROFILE=release

# 1. Dependency layer: only the manifests, with stub sources for every target cargo
#    discovers or Cargo.toml declares (lib, bin, every [[bench]], examples/baseline.rs),
#    so this layer is rebuilt only when Cargo.toml or Cargo.lock change. The crates
#    cargo downloads stay in a build cache (not in the image), reused by the next build.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    mkdir -p src benches examples \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/dataset.rs \
 && echo 'fn main() {}' > benches/log_escape.rs \
 && echo 'fn main() {}' > examples/baseline.rs \
 && cargo build --profile "$CARGO_PROFILE" --locked --bin kvserve \
 && rm -rf src benches examples

# 2. The real sources. Only the binary is built: benches, examples and tests are not
#    needed in the image (their stubs above only satisfy the manifest).
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    touch src/main.rs src/lib.rs \
 && cargo build --profile "$CARGO_PROFILE" --locked --bin kvserve \
 && install -D -m 0555 "target/$CARGO_PROFILE/kvserve" /out/kvserve

############################ runtime ############################
FROM ${RUNTIME_IMAGE}

LABEL org.opencontainers.image.title="kvserve" \
      org.opencontainers.image.description="Read-only UUID -> text key-value HTTP service" \
      org.opencontainers.image.licenses="MIT"

COPY --from=builder /out/kvserve /usr/local/bin/kvserve
# The sample data and its checksum sidecar (verified automatically at load).
COPY --chown=0:0 --chmod=0444 data/sample.data data/sample.data.sha256 /srv/kvserve/data/

# Listen on all interfaces inside the container. The admin listener (9000: probes,
# metrics, /admin/*) has no authentication unless JWT is configured: never publish it
# outside a trusted network. KVSERVE_ADMIN_INSECURE acknowledges that; the Kubernetes
# manifests restrict port 9000 with a NetworkPolicy, and production configures JWT.
ENV KVSERVE_DATA=/srv/kvserve/data/sample.data \
    KVSERVE_ADDR=0.0.0.0:8000 \
    KVSERVE_ADMIN_ADDR=0.0.0.0:9000 \
    KVSERVE_ADMIN_INSECURE=true

# 8000: API (/v1, /get_value, /docs). 9000: admin (/livez, /readyz, /metrics, /admin/*).
EXPOSE 8000 9000

# Numeric uid so Kubernetes runAsNonRoot can verify it. kvserve writes nothing to disk,
# so the container runs with a read-only root file system.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kvserve"]
CMD ["serve"]
