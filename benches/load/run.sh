#!/usr/bin/env bash
# HTTP load benchmark: kvserve against a bare hyper server (examples/baseline.rs) in the
# same run, on loopback only, bounded in time. Writes target/bench/results.jsonl and
# prints a Markdown table (the source of BENCHMARKS.md's HTTP and start-up figures).
#
#   benches/load/run.sh                 # 1M lines, 10 s per scenario (about 3 minutes)
#   LINES=10000000 benches/load/run.sh  # the 10M-line figures (about 8 minutes)
#
# Knobs: DURATION (seconds per scenario), and those of benches/load/common.sh.
# "Server CPU per request" is the server's utime+stime from /proc/PID/stat over the
# scenario divided by the requests answered: on a 2-core machine shared with wrk it is
# a fairer figure than req/s alone.
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
source benches/load/common.sh
BASE=127.0.0.1:18100
TICKS=$(getconf CLK_TCK)
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
cargo build --release --quiet --example baseline

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
peak_rss_kb() { awk '/VmHWM/ { print $2 }' "/proc/$1/status"; }
rss_kb() { awk '/VmRSS/ { print $2 }' "/proc/$1/status"; }
anon_kb() { awk '/RssAnon/ { print $2 }' "/proc/$1/status"; }

PID=
stop() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
  fi
  PID=
}
trap stop EXIT

# start NAME READY_URL CMD...: starts a server, records its time to ready.
start() {
  local name=$1 ready=$2; shift 2
  local t0; t0=$(date +%s.%N)
  "$@" > "$WORK/$name.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 1200); do
    curl -sf -o /dev/null "$ready" && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  local t1; t1=$(date +%s.%N)
  # Memory as it stays: after the index moved into huge pages.
  [ "$name" = baseline ] || wait_settled "$WORK/$name.log"
  # Ready but gone: something else answered on the port.
  kill -0 "$PID" 2>/dev/null || { echo "$name exited; is its port taken?" >&2; cat "$WORK/$name.log" >&2; exit 1; }
  printf '{"server": "%s", "lines": %d, "ready_s": %.3f, "rss_kb": %d, "anon_kb": %d, "peak_rss_kb": %d, "file_bytes": %d}\n' \
    "$name" "$LINES" "$(echo "$t1 - $t0" | bc)" "$(rss_kb "$PID")" "$(anon_kb "$PID")" "$(peak_rss_kb "$PID")" \
    "$(stat -c %s "$DATA")" | tee -a "$RESULTS" >&2
}

# scenario NAME URL_TEMPLATE DIST [RATE]
scenario() {
  local name=$1 template=$2 dist=$3 rate=${4:-}
  # Warm up (caches, connections), then measure.
  KEYS_FILE="$SAMPLE" KEYS_PATH="$template" KEYS_DIST="$dist" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s benches/load/keys.lua "http://$TARGET" >/dev/null 2>&1 || true
  local before; before=$(cpu_ticks "$PID")
  local out
  out=$(KEYS_FILE="$SAMPLE" KEYS_PATH="$template" KEYS_DIST="$dist" KEYS_RATE="$rate" KEYS_CONNECTIONS="$CONNECTIONS" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s benches/load/keys.lua "http://$TARGET" | tail -n 1)
  local after; after=$(cpu_ticks "$PID")
  local requests; requests=$(echo "$out" | sed -E 's/.*"requests": ([0-9]+).*/\1/')
  local cpu_us; cpu_us=$(echo "scale=3; ($after - $before) * 1000000 / $TICKS / $requests" | bc)
  echo "$out" | sed -E "s/^\{/{\"scenario\": \"$name\", \"lines\": $LINES, \"cpu_us_per_req\": $cpu_us, /" | tee -a "$RESULTS" >&2
}

# The ceiling: bare hyper, fixed body.
start baseline "http://$BASE/" target/release/examples/baseline "$BASE"
TARGET=$BASE scenario "baseline" "/%s" uniform
# The floor for the tail at half load: the same pacing against bare hyper.
base_peak=$(grep '"baseline"' "$RESULTS" | grep scenario | sed -E 's/.*"rps": ([0-9.]+).*/\1/')
TARGET=$BASE scenario "baseline-half-peak" "/%s" uniform "$(echo "$base_peak / 2" | bc)"
stop

for storage in memory mmap; do
  start "kvserve-$storage" "http://$ADMIN/readyz" "$KV" --data "$DATA" --storage "$storage" \
    --addr "$API" --admin-addr "$ADMIN" --log-level "info,kvserve::access=off" --cache-capacity 0
  TARGET=$API scenario "v1-$storage-uniform" "/v1/keys/%s" uniform
  TARGET=$API scenario "v1-$storage-zipf" "/v1/keys/%s" zipf
  if [ "$storage" = memory ]; then
    TARGET=$API scenario "legacy-memory-uniform" "/get_value/%s" uniform
    TARGET=$API scenario "value-memory-uniform" "/v1/keys/%s/value" uniform
    peak=$(grep '"v1-memory-uniform"' "$RESULTS" | sed -E 's/.*"rps": ([0-9.]+).*/\1/')
    TARGET=$API scenario "v1-memory-half-peak" "/v1/keys/%s" uniform "$(echo "$peak / 2" | bc)"
  fi
  stop
done

# The access log costs: same server, one line per request to a file.
start "kvserve-access-log" "http://$ADMIN/readyz" "$KV" --data "$DATA" --addr "$API" --admin-addr "$ADMIN"
TARGET=$API scenario "v1-memory-uniform-access-log" "/v1/keys/%s" uniform
stop

# The LRU: 100k entries (a tenth of the key sample; the default with --storage mmap),
# against the runs above without it, in both storage modes.
for storage in memory mmap; do
  start "kvserve-$storage-lru" "http://$ADMIN/readyz" "$KV" --data "$DATA" --storage "$storage" \
    --addr "$API" --admin-addr "$ADMIN" --log-level "info,kvserve::access=off" --cache-capacity 100000
  TARGET=$API scenario "v1-$storage-uniform-lru" "/v1/keys/%s" uniform
  TARGET=$API scenario "v1-$storage-zipf-lru" "/v1/keys/%s" zipf
  stop
done

python3 benches/load/report.py "$RESULTS"
