#!/usr/bin/env bash
# kvserve's one entry point for people and CI.
#
#   ./runner.sh            build, run every test, then serve data/sample.data
#   ./runner.sh test       install what the tests need (if missing), then run every test
#   ./runner.sh serve      build in release mode and serve (extra args go to kvserve)
#   ./runner.sh setup      only install the test tools
#   ./runner.sh image      build the container image from Dockerfile with buildah and check
#                          it (serves as uid 65532 from the /data volume, read-only root,
#                          refuses to start without its data); tests/image/check.sh says how.
#                          Needs root (sudo otherwise); its cache is target/image-cache/.
#                          `test` runs it too, in the background from the start.
#
# Everything it installs comes from the package registries: Rust crates (cargo),
# Debian packages (apt-get), Python packages (pip, into target/pyenv) and npm packages
# (into node_modules of tests/external/browser, lint and generated_clients). Debian's
# prometheus package brings the Prometheus server and promtool for the metrics checks.
set -euo pipefail
cd "$(dirname "$0")"

# Each step's line says how long the run has taken so far, so a slow CI log shows where.
log() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*" >&2; }

PYENV=target/pyenv

need_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# What needs root or rustup: done first, in the foreground.
setup_system() {
  command -v cargo >/dev/null || { echo "cargo is required: install Rust from rustup.rs" >&2; exit 1; }
  rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
  need_apt util-linux chromium prometheus
  setup_image
  command -v kubectl >/dev/null || need_apt kubernetes-client
  command -v npm >/dev/null || need_apt nodejs npm
  if [ ! -x "$PYENV/bin/python" ]; then
    log "creating $PYENV"
    python3 -m venv "$PYENV" || { need_apt python3-venv; python3 -m venv "$PYENV"; }
  fi
}

# The image check (tests/image/check.sh): buildah builds and runs the Dockerfile without
# a daemon, mmdebstrap makes its Debian base images; curl and ss talk to the container.
setup_image() {
  need_apt buildah mmdebstrap curl iproute2
}

# The Python and npm test tools: user space only, so `test` runs it beside clippy.
setup_tools() {
  # Reinstall only when the requirements changed since the last install.
  local stamp="$PYENV/.requirements"
  if ! cat tests/external/requirements*.txt | cmp -s - "$stamp"; then
    log "pip install -r tests/external/requirements.txt -r tests/external/requirements-k8s.txt"
    "$PYENV/bin/pip" install -q --disable-pip-version-check --no-compile \
      -r tests/external/requirements.txt -r tests/external/requirements-k8s.txt
    cat tests/external/requirements*.txt > "$stamp"
  fi
  if [ ! -d tests/external/browser/node_modules/playwright-core ]; then
    log "npm ci (playwright-core, driving Debian's chromium)"
    (cd tests/external/browser && npm ci --no-audit --no-fund --loglevel=error)
  fi
  npm_ci tests/external/lint "@redocly/cli, for openapi-lint"
  npm_ci tests/external/generated_clients "@hey-api/openapi-ts and typescript, for generated-clients"
}

# `npm ci` in DIR unless its node_modules was installed from the same package-lock.json.
npm_ci() {
  local dir=$1 what=$2
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.kvserve-installed-lock"; then
    log "npm ci in $dir ($what)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error &&
      cp package-lock.json node_modules/.kvserve-installed-lock)
  fi
}

setup() {
  setup_system
  setup_tools
}

# Show a background step's log and fail if it failed.
report() {
  local name=$1 status=$2 file=$3
  cat "$file"
  if ((status)); then echo "$name failed (exit $status)" >&2; fi
  return "$status"
}

# On two cores a serial run spends most of its time waiting: on pip and npm while the
# compiler has work, on schemathesis' time budget, browsers and servers while the test
# binaries could run. So the tools install beside fmt and clippy, and the external checks
# (tests/external) run beside `cargo test`; each background step's log is printed whole
# when it ends, and every step is reported before a failure ends the run.
run_tests() {
  setup_system
  mkdir -p target
  # First, as the longest step: its base images and in-container build need nothing
  # the other steps make, and on two cores its I/O-bound half (mmdebstrap) overlaps
  # with the compiler's work.
  log "container image build and check (tests/image), in the background (log: target/image.log)"
  tests/image/check.sh > target/image.log 2>&1 &
  local image=$! image_status=0
  log "pip and npm tools, in the background (log: target/setup-tools.log)"
  setup_tools > target/setup-tools.log 2>&1 &
  local tools=$! lint=0 tools_status=0
  log "cargo fmt --check"
  cargo fmt --all -- --check || lint=$?
  if ((lint == 0)); then
    log "cargo clippy --all-targets -- -D warnings"
    cargo clippy --all-targets --quiet -- -D warnings || lint=$?
  fi
  wait "$tools" || tools_status=$?
  log "pip and npm tools done"
  report "installing the test tools" "$tools_status" target/setup-tools.log
  ((lint == 0)) || { kill "$image" 2>/dev/null || true; exit "$lint"; }

  log "cargo test --no-run (build every test target and target/debug/kvserve)"
  cargo test --all-targets --no-run --quiet
  log "external checks (tests/external), in the background (log: target/external.log)"
  PATH="$PWD/$PYENV/bin:$PATH" "$PYENV/bin/python" tests/external/run.py --jobs 4 target/debug/kvserve \
    > target/external.log 2>&1 &
  local external=$! tests=0 external_status=0
  # Four test threads on two cores: the slowest tests wait on deadlines and idle
  # timers (keep-alive, slow readers), not on the CPU, so more of them overlap.
  log "cargo test (RUST_TEST_THREADS=${RUST_TEST_THREADS:-4})"
  RUST_TEST_THREADS=${RUST_TEST_THREADS:-4} cargo test --all-targets || tests=$?
  log "cargo test done (exit $tests); waiting for the external checks"
  wait "$external" || external_status=$?
  report "external checks" "$external_status" target/external.log || true
  log "waiting for the image check"
  wait "$image" || image_status=$?
  report "image check" "$image_status" target/image.log || true
  if ((tests || external_status || image_status)); then
    echo "tests failed: cargo test exit $tests, external checks exit $external_status," \
      "image check exit $image_status" >&2
    exit 1
  fi
  log "all tests passed"
}

serve() {
  cargo build --release --quiet
  exec target/release/kvserve serve "$@"
}

case "${1:-all}" in
  setup) setup ;;
  test) run_tests ;;
  image) setup_image; tests/image/check.sh ;;
  serve) shift; serve "$@" ;;
  all) run_tests; serve ;;
  *) echo "usage: $0 [test|serve|setup|image]" >&2; exit 2 ;;
esac
