#!/usr/bin/env bash
# Where a request's CPU goes: the bare hyper baseline and kvserve (access log off, then
# default flags) under the same wrk load, each profiled with `perf record` for 8 s, the
# samples grouped by what they are (kernel, hyper, the lookup, kvserve's own code,
# libc, tokio, logging, poem) and divided by the requests answered in that window:
# microseconds of server CPU per request, by part, printed as a Markdown table by
# benches/load/gap.py. One pass takes about a minute; perf must be installed.
#
#   benches/load/gap.sh                      # 1M lines, this tree's release build
#   KVSERVE=/tmp/other/kvserve benches/load/gap.sh
#   BATCH=100 benches/load/gap.sh            # POST /v1/keys/batch with 100 keys a request
# Knobs: BATCH (0: GETs of single keys; N > 0: batch lookups of N keys, the baseline
# answering the same POSTs, and kvserve profiled with default flags only), and those
# of benches/load/common.sh.
set -euo pipefail
BATCH=${BATCH:-0}
cd "$(dirname "$0")/../.."
command -v perf >/dev/null || { echo "gap.sh needs perf (apt-get install linux-perf)" >&2; exit 2; }
source benches/load/common.sh
cargo build --release --quiet --example baseline
KVSERVE=${KVSERVE:-target/release/kvserve}
OUT="$WORK/gap"
mkdir -p "$OUT"
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null || true' EXIT

# profile NAME READY_URL PATH_TEMPLATE COMMAND...: starts the server, warms up, then
# records 8 s of perf samples in the middle of a 10 s wrk run.
profile() {
  local name=$1 ready=$2 path=$3
  shift 3
  "$@" > "$OUT/$name.log" 2>&1 &
  PID=$!
  wait_ready "$ready" "$PID" "$OUT/$name.log"
  [ "$name" = baseline ] || wait_settled "$OUT/$name.log"
  KEYS_FILE="$SAMPLE" KEYS_PATH="$path" KEYS_DIST=uniform KEYS_BATCH="$BATCH" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s benches/load/keys.lua "http://$API" >/dev/null 2>&1 || true
  KEYS_FILE="$SAMPLE" KEYS_PATH="$path" KEYS_DIST=uniform KEYS_BATCH="$BATCH" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d10s -s benches/load/keys.lua "http://$API" > "$OUT/$name.wrk" 2>&1 &
  local load=$!
  sleep 1
  perf record -F 999 -g -p "$PID" -o "$OUT/$name.perf" -- sleep 8 >/dev/null 2>&1
  wait "$load"
  kill "$PID"
  wait "$PID" 2>/dev/null || true
  PID=""
}

if (( BATCH > 0 )); then
  profile baseline "http://$API/" / target/release/examples/baseline "$API"
  profile kvserve-batch "http://$ADMIN/readyz" /v1/keys/batch "$KVSERVE" --data "$DATA" --addr "$API" --admin-addr "$ADMIN"
  python3 benches/load/gap.py "$OUT" baseline kvserve-batch
  exit 0
fi
profile baseline "http://$API/" /%s target/release/examples/baseline "$API"
profile kvserve-access-off "http://$ADMIN/readyz" /v1/keys/%s "$KVSERVE" --data "$DATA" --addr "$API" --admin-addr "$ADMIN" \
  --log-level info,kvserve::access=off
profile kvserve-default "http://$ADMIN/readyz" /v1/keys/%s "$KVSERVE" --data "$DATA" --addr "$API" --admin-addr "$ADMIN"
python3 benches/load/gap.py "$OUT" baseline kvserve-access-off kvserve-default
