#!/usr/bin/env bash
# The case the LRU exists for: `--storage mmap` with a file larger than the memory the
# process may use, so page-cache pages of the file get evicted and re-read. Emulated
# with a cgroup (v1 memory controller) memory limit around kvserve, with the page cache
# dropped first so the file's pages are charged to that cgroup. Runs kvserve without
# and with the LRU under the same Zipf load and reports req/s, p99, CPU per request and
# major page faults per request. Needs root.
#
#   LINES=10000000 LIMIT_MB=500 benches/load/lru-pressure.sh
#
# Knobs: LIMIT_MB (500, set once the load is done: the index of 10M keys takes
# ~360 MB, leaving ~140 MB of page cache for a 727 MB file), DURATION (10), CAPACITY (100000), DIST (zipf), and those of
# benches/load/common.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

LIMIT_MB=${LIMIT_MB:-500}
DURATION=${DURATION:-10}
CAPACITY=${CAPACITY:-100000}
DIST=${DIST:-zipf}
source benches/load/common.sh
CGROUP=/sys/fs/cgroup/memory/kvserve-lru-pressure
[ -d /sys/fs/cgroup/memory ] || { echo "needs the cgroup v1 memory controller" >&2; exit 1; }
mkdir -p "$CGROUP"
TICKS=$(getconf CLK_TCK)

PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null || true' EXIT

echo "| LRU entries | req/s | p99 | server CPU / request | major faults / request | RSS at the end |"
echo "|---:|---:|---:|---:|---:|---:|"
for capacity in 0 "$CAPACITY"; do
  sync
  echo 1 > /proc/sys/vm/drop_caches
  # No limit during the load (the loader's temporary per-shard lists need ~21 B/key
  # more), then LIMIT_MB once it serves: the kernel evicts file pages down to it.
  echo -1 > "$CGROUP/memory.limit_in_bytes"
  sh -c "echo \$\$ > $CGROUP/tasks; exec $KV --data $DATA --storage mmap --addr $API --admin-addr $ADMIN \
    --log-level info,kvserve::access=off --cache-capacity $capacity" > "$WORK/lru-pressure.log" 2>&1 &
  PID=$!
  wait_ready "http://$ADMIN/readyz" "$PID" "$WORK/lru-pressure.log"
  wait_settled "$WORK/lru-pressure.log"
  echo $((LIMIT_MB * 1024 * 1024)) > "$CGROUP/memory.limit_in_bytes"
  KEYS_FILE="$SAMPLE" KEYS_DIST="$DIST" wrk -t"$THREADS" -c"$CONNECTIONS" -d5s -s benches/load/keys.lua "http://$API" >/dev/null 2>&1
  read -r cpu_before faults_before < <(awk '{ print $14 + $15, $12 }' "/proc/$PID/stat")
  out=$(KEYS_FILE="$SAMPLE" KEYS_DIST="$DIST" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
    -s benches/load/keys.lua "http://$API" | tail -n 1)
  read -r cpu_after faults_after < <(awk '{ print $14 + $15, $12 }' "/proc/$PID/stat")
  python3 - "$out" "$capacity" "$cpu_before" "$cpu_after" "$faults_before" "$faults_after" "$TICKS" \
    "$(awk '/VmRSS/ { print $2 }' "/proc/$PID/status")" <<'EOF'
import json, sys
out, capacity, cb, ca, fb, fa, ticks, rss = sys.argv[1:]
run = json.loads(out)
n = run["requests"]
print(f"| {int(capacity):,} | {run['rps']:,.0f} | {run['p99_us'] / 1000:.2f} ms "
      f"| {(int(ca) - int(cb)) * 1e6 / int(ticks) / n:.1f} µs | {(int(fa) - int(fb)) / n:.3f} "
      f"| {int(rss) / 1024:,.0f} MiB |")
EOF
  kill "$PID"; wait "$PID" 2>/dev/null || true
  PID=
done
