#!/usr/bin/env bash
# Build the container image from ./Dockerfile, unchanged, and check what it promises:
# it serves /readyz and a key as uid 65532 from the data volume the Kubernetes manifests
# mount (/data, KVSERVE_DATA=/data/kvserve.data), on a read-only root file system, and
# refuses to start, saying why, when that volume is missing. Prints the image size.
#
# No Docker engine and no registry but Debian's here: buildah builds and runs the image
# without a daemon (`--isolation chroot`, as root), and the two base images the
# Dockerfile names (rust:..., gcr.io/distroless/cc...) are replaced, through its
# BUILDER_IMAGE/RUNTIME_IMAGE build arguments, by ones mmdebstrap makes from Debian sid
# (sid: its rustc is new enough for rust-version; the runtime is sid too so that its
# glibc is at least the builder's):
#   builder  minbase + rustc, cargo, gcc, libc6-dev, ca-certificates; CARGO_HOME as in
#            the rust images (/usr/local/cargo), for the Dockerfile's registry cache
#   runtime  like distroless/cc: only base-files, libc6, libgcc-s1 (kvserve links
#            nothing else; it makes no TLS connection) and a `nonroot` user 65532;
#            no shell, no package manager
#
# Everything lives under target/image-cache/ (du -sh it; delete it to start over):
#   *-<key>.tar   the base root file systems, reused while their recipe (package list,
#                 suite, options: the key hashes them) is unchanged
#   storage/ run/ buildah's images and state (overlay driver; vfs where overlay fails)
#   tmp/          buildah's RUN --mount=type=cache folders: cargo's registry downloads
#   volume/       the data volume: data/sample.data as /data/kvserve.data
# The build keeps its layers (--layers): an unchanged Cargo.lock reuses the dependency
# layer, the slow part. The previous image is deleted after each build, and the layers
# of older builds once storage/ grows past KVSERVE_IMAGE_CACHE_MAX_MIB (default 6144):
# the next build then starts from the base images again.
#
# The binary is built with the cargo profile `image-check` (Cargo.toml: no optimiser;
# the check proves the image's wiring, not its speed): CARGO_PROFILE=release
# tests/image/check.sh builds the image exactly as it ships.
#
# Usage: tests/image/check.sh  (as root, or through sudo; run by `./runner.sh image`)
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${KVSERVE_IMAGE_CACHE:-target/image-cache}
IMAGE=localhost/kvserve:check
SUITE=sid
start=$SECONDS
step() { printf '  [image %ss] %s\n' "$((SECONDS - start))" "$*" >&2; }
fail() {
  echo "image check FAILED: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || exec sudo --preserve-env=SSL_CERT_FILE,KVSERVE_IMAGE_CACHE "$0" "$@"
mkdir -p "$CACHE/tmp" "$CACHE/volume"
CACHE=$(cd "$CACHE" && pwd)
# buildah keeps RUN --mount=type=cache folders under $TMPDIR, so they stay in the cache.
export TMPDIR=$CACHE/tmp

driver=overlay
probe_storage() {
  buildah --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver "$1" images >/dev/null 2>&1
}
if [ -f "$CACHE/driver" ]; then
  driver=$(cat "$CACHE/driver")
elif ! probe_storage overlay; then
  rm -rf "$CACHE/storage" "$CACHE/run"
  driver=vfs
fi
echo "$driver" >"$CACHE/driver"
bah() { buildah --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver "$driver" "$@"; }

# The machine's CA bundle, for cargo's downloads inside the build (a proxy may re-sign).
ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$ca" ] || ca=/etc/ssl/certs/ca-certificates.crt

############################ base images ############################
# Documentation, manual pages and translations are left out of both.
slim=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*')
builder_recipe=(--variant=minbase "${slim[@]}" --include=rustc,cargo,gcc,libc6-dev,ca-certificates)
# `extract` unpacks the packages and runs no maintainer script: no dpkg, apt or shell
# is installed, as in distroless. The hook adds distroless' users and drops apt's files.
runtime_recipe=(--variant=extract "${slim[@]}" --include=base-files,libc6,libgcc-s1
  --customize-hook='printf "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" > "$1/etc/passwd"'
  --customize-hook='printf "root:x:0:\nnonroot:x:65532:\n" > "$1/etc/group"'
  --customize-hook='install -d -m 0700 -o 65532 -g 65532 "$1/home/nonroot" && install -d -m 1777 "$1/tmp" && install -d -m 0700 "$1/root"'
  --customize-hook='rm -rf "$1/etc/apt" "$1/var/lib/apt" "$1/var/cache/apt" "$1/var/log/apt"')

# recipe_key NAME ARGS...: a short hash of what makes the tarball.
recipe_key() { printf '%s\n' "$SUITE" "$@" | sha256sum | cut -c1-12; }

# base_image NAME KEY CONFIG... -- RECIPE...: make (or reuse) the tarball and the image
# localhost/kvserve-base-NAME:KEY, and delete the ones of older recipes.
base_image() {
  local name=$1 key=$2
  shift 2
  local config=()
  while [ "$1" != -- ]; do
    config+=("$1")
    shift
  done
  shift
  local tar="$CACHE/$name-$key.tar" ref="localhost/kvserve-base-$name:$key"
  find "$CACHE" -maxdepth 1 -name "$name-*.tar" ! -name "$name-$key.tar" -delete
  bah images --format '{{.Name}}:{{.Tag}}' | grep "^localhost/kvserve-base-$name:" |
    grep -v ":$key\$" | xargs -r -n1 buildah --root "$CACHE/storage" --runroot "$CACHE/run" \
    --storage-driver "$driver" rmi >/dev/null || true
  if [ ! -s "$tar" ]; then
    step "mmdebstrap $name base ($SUITE; log: $CACHE/$name-mmdebstrap.log)"
    mmdebstrap --quiet --aptopt='Acquire::Check-Valid-Until "false"' "$@" "$SUITE" "$tar.part" \
      >"$CACHE/$name-mmdebstrap.log" 2>&1 || {
      cat "$CACHE/$name-mmdebstrap.log" >&2
      fail "mmdebstrap $name"
    }
    mv "$tar.part" "$tar"
  fi
  if ! bah inspect --type image "$ref" >/dev/null 2>&1; then
    step "importing $tar as $ref"
    local ctr
    ctr=$(bah from --pull=never scratch)
    bah add --quiet "$ctr" "$tar" / >/dev/null
    bah config "${config[@]}" "$ctr"
    bah commit --quiet --rm "$ctr" "$ref" >/dev/null
  fi
  echo "$ref"
}

path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
builder=$(base_image builder "$(recipe_key "${builder_recipe[@]}")" \
  --env CARGO_HOME=/usr/local/cargo --env PATH=/usr/local/cargo/bin:$path -- "${builder_recipe[@]}")
runtime=$(base_image runtime "$(recipe_key "${runtime_recipe[@]}")" \
  --env PATH=$path --user 65532:65532 --workingdir /home/nonroot -- "${runtime_recipe[@]}")

############################ build ############################
step "buildah bud (Dockerfile unchanged; BUILDER_IMAGE=$builder RUNTIME_IMAGE=$runtime CARGO_PROFILE=${CARGO_PROFILE:-image-check}; log: $CACHE/build.log)"
old_id=$(bah inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)
bah bud --quiet --pull=never --layers --isolation chroot \
  --build-arg BUILDER_IMAGE="$builder" --build-arg RUNTIME_IMAGE="$runtime" \
  --build-arg CARGO_PROFILE="${CARGO_PROFILE:-image-check}" \
  --volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro" \
  -f Dockerfile -t "$IMAGE" . >"$CACHE/build.log" 2>&1 || {
  tail -40 "$CACHE/build.log" >&2
  fail "buildah bud (whole log: $CACHE/build.log)"
}
step "built $IMAGE"
# The previous image (now untagged); pruning dangling images would also delete the
# builder stage's layers, the cache, so that waits until storage/ is too large.
new_id=$(bah inspect --type image --format '{{.FromImageID}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then bah rmi "$old_id" >/dev/null 2>&1 || true; fi
used=$(du -sxm "$CACHE/storage" | cut -f1)
if ((used > ${KVSERVE_IMAGE_CACHE_MAX_MIB:-6144})); then
  step "storage/ is $used MiB: deleting the cached layers of older builds"
  bah rmi --prune >/dev/null 2>&1 || true
fi

############################ checks ############################
ctr=""
server=""
ro_mnt=""
cleanup() {
  [ -z "$server" ] || kill "$server" 2>/dev/null || true
  [ -z "$ro_mnt" ] || umount "$ro_mnt" 2>/dev/null || true
  [ -z "$ctr" ] || bah rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# The image's own configuration: what `docker run` and Kubernetes start.
user=$(bah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
[ "$user" = 65532:65532 ] || fail "the image's User is '$user', not 65532:65532"
entry=$(bah inspect --type image --format '{{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}' "$IMAGE")
[ "$entry" = "[/usr/local/bin/kvserve] [serve]" ] || fail "entrypoint/cmd: $entry"
step "ok: User 65532:65532, entrypoint $entry"

ctr=$(bah from --pull=never "$IMAGE")
# k8s/base/server/config.env: the data file on the volume mounted at /data.
k8s_env=(--env KVSERVE_DATA=/data/kvserve.data)
# Free ports: the listeners take what the kernel gives (port 0) and log them.
listen=(--addr 127.0.0.1:0 --admin-addr 127.0.0.1:0)

# 1. No data volume: a non-zero exit and a message naming the file.
set +e
out=$(timeout 60 buildah --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver "$driver" \
  run --isolation chroot --user 65532:65532 "${k8s_env[@]}" "$ctr" -- \
  /usr/local/bin/kvserve serve "${listen[@]}" 2>&1)
status=$?
set -e
grep -q 'error: cannot open data file /data/kvserve.data: No such file or directory' <<<"$out" &&
  grep -q 'the folder /data does not exist either: is the data volume mounted?' <<<"$out" ||
  fail "without the data volume, no message naming the file and the volume (exit $status):
$out"
((status != 0)) || fail "without the data volume kvserve exited 0"
step "ok: without the data volume, exit $status and: $(echo "$out" | grep '^error:')"

# 2. The data volume (read-only, as in the Deployment) and a read-only root: buildah run
#    has no --read-only, so the container's root is bind-mounted read-only onto itself
#    before the run (the chroot inherits it). The mount points buildah binds files onto
#    must exist first; buildah's own clean-up after a run then fails on the read-only
#    root, so that run's exit status is not used.
cp data/sample.data "$CACHE/volume/kvserve.data"
echo "$(cut -d' ' -f1 data/sample.data.sha256)  kvserve.data" >"$CACHE/volume/kvserve.data.sha256"
mnt=$(bah mount "$ctr")
mkdir -p "$mnt/data" "$mnt/run" "$mnt/dev" "$mnt/proc" "$mnt/sys"
touch "$mnt/run/.containerenv" "$mnt/etc/hosts" "$mnt/etc/resolv.conf" "$mnt/etc/hostname"
mount --bind "$mnt" "$mnt"
ro_mnt=$mnt
mount -o remount,bind,ro "$mnt"
run_ro() {
  buildah --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver "$driver" \
    run --isolation chroot --volume "$CACHE/volume:/data:ro" "${k8s_env[@]}" "$@"
}
log=$CACHE/serve.log
run_ro --user 65532:65532 "$ctr" -- /usr/local/bin/kvserve serve "${listen[@]}" >"$log" 2>&1 &
server=$!
api="" admin=""
for _ in $(seq 300); do
  line=$(grep -m1 'listening api=' "$log" || true)
  if [ -n "$line" ]; then
    api=$(sed -E 's/.*api=([0-9.:]+).*/\1/' <<<"$line")
    admin=$(sed -E 's/.*admin=([0-9.:]+).*/\1/' <<<"$line")
    break
  fi
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
[ -n "$admin" ] || fail "kvserve did not start listening: $(cat "$log")"
ready=""
for _ in $(seq 300); do
  ready=$(curl -s -o /dev/null -w '%{http_code}' "http://$admin/readyz" || true)
  [ "$ready" = 200 ] && break
  sleep 0.1
done
[ "$ready" = 200 ] || fail "/readyz answered '$ready': $(cat "$log")"
key=$(head -1 data/sample.data | cut -d' ' -f1)
want=$(head -1 data/sample.data | cut -d' ' -f2-)
got=$(curl -sf "http://$api/v1/keys/$key/value") || fail "GET /v1/keys/$key/value failed"
[ "$got" = "$want" ] || fail "key $key: got '$got', want '$want'"
step "ok: /readyz 200 on $admin, /v1/keys/$key/value from /data/kvserve.data on $api"

# The serving process, found by the port it listens on.
port=${admin##*:}
pid=$(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
[ -n "$pid" ] || fail "no process listens on $admin"
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$pid/status")
[ "$uids" = "65532 65532 65532 65532" ] || fail "kvserve runs with uids $uids"
[ "$gids" = "65532 65532 65532 65532" ] || fail "kvserve runs with gids $gids"
root_opts=$(awk '$5 == "/" {print $6}' "/proc/$pid/mountinfo" | tail -1)
[[ ",$root_opts," == *,ro,* ]] || fail "kvserve's / is mounted '$root_opts'"
data_opts=$(awk '$5 == "/data" {print $6}' "/proc/$pid/mountinfo" | tail -1)
[[ ",$data_opts," == *,ro,* ]] || fail "kvserve's /data is mounted '$data_opts'"
if touch "/proc/$pid/root/probe" 2>"$CACHE/touch.err"; then fail "root could write to kvserve's /"; fi
grep -q 'Read-only file system' "$CACHE/touch.err" || fail "writing to kvserve's /: $(cat "$CACHE/touch.err")"
step "ok: pid $pid runs as uid/gid 65532, its / is mounted $root_opts and /data $data_opts; even root cannot write there"
kill -TERM "$pid"
wait "$server" || true
server=""
grep -q 'shutdown complete' "$log" || fail "kvserve did not shut down cleanly: $(tail -5 "$log")"

# 3. A write from inside the image, as its user and as root: the root file system refuses.
for who in 65532:65532 0:0; do
  out=$(run_ro --user "$who" "$ctr" -- /usr/local/bin/kvserve gen --lines 1 --out /probe.data 2>&1 || true)
  grep -q 'Read-only file system' <<<"$out" || fail "kvserve gen --out /probe.data as $who: $out"
done
[ ! -e "$mnt/probe.data" ] || fail "/probe.data was written"
step "ok: kvserve gen --out /probe.data fails with 'Read-only file system' as 65532 and as root"

size=$(bah images --format '{{.Size}}' "$IMAGE")
base=$(bah images --format '{{.Size}}' "$runtime")
step "image $IMAGE: $size (runtime base $base); cache $(du -shx "$CACHE" | cut -f1) in $CACHE ($driver)"
echo "image check passed in $((SECONDS - start))s: $IMAGE is $size"
