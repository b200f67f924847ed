#!/usr/bin/env bash
# Soak run: kvserve under a steady load at half its peak rate for SOAK_SECONDS (600),
# on loopback, with the process's memory sampled every 10 s. Prints a Markdown table for
# BENCHMARKS.md: latency over the whole run, errors, and RSS at the start, the end and
# its maximum (stable memory means no growth after the first minutes).
#
#   benches/load/soak.sh                        # 1M lines, 10 minutes
#   LINES=10000000 SOAK_SECONDS=600 benches/load/soak.sh
#
# Knobs: SOAK_SECONDS, STORAGE (memory), PEAK (req/s; measured with a 10 s run first
# if unset), and those of benches/load/common.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

SOAK_SECONDS=${SOAK_SECONDS:-600}
STORAGE=${STORAGE:-memory}
source benches/load/common.sh

"$KV" --data "$DATA" --storage "$STORAGE" --addr "$API" --admin-addr "$ADMIN" \
  --log-level "info,kvserve::access=off" > "$WORK/soak.log" 2>&1 &
PID=$!
SAMPLER=
trap 'kill $PID 2>/dev/null || true; [ -n "$SAMPLER" ] && kill $SAMPLER 2>/dev/null || true' EXIT
wait_ready "http://$ADMIN/readyz" "$PID" "$WORK/soak.log"
wait_settled "$WORK/soak.log"

wrk_run() { # seconds rate
  KEYS_FILE="$SAMPLE" KEYS_PATH="/v1/keys/%s" KEYS_DIST=uniform KEYS_RATE="${2:-}" KEYS_CONNECTIONS="$CONNECTIONS" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$1s" -s benches/load/keys.lua "http://$API" | tail -n 1
}

if [ -z "${PEAK:-}" ]; then
  PEAK=$(wrk_run 10 | sed -E 's/.*"rps": ([0-9.]+).*/\1/')
fi
RATE=$(echo "$PEAK / 2" | bc)
echo "peak $PEAK req/s; soaking at $RATE req/s for $SOAK_SECONDS s" >&2

RSS_LOG="$WORK/soak-rss.tsv"
: > "$RSS_LOG"
( while kill -0 "$PID" 2>/dev/null; do
    printf '%s\t%s\n' "$(date +%s)" "$(awk '/VmRSS/ { print $2 }' "/proc/$PID/status")" >> "$RSS_LOG"
    sleep 10
  done ) &
SAMPLER=$!
OUT=$(wrk_run "$SOAK_SECONDS" "$RATE")
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=
echo "$OUT" >&2

python3 - "$OUT" "$RSS_LOG" "$LINES" "$STORAGE" "$RATE" "$SOAK_SECONDS" <<'EOF'
import json, sys
out, rss_log, lines, storage, rate, seconds = sys.argv[1:]
run = json.loads(out)
rss = [int(line.split("\t")[1]) for line in open(rss_log) if line.strip()]
mib = lambda kib: f"{kib / 1024:,.0f} MiB"
print("| lines | storage | target rate | achieved | requests | errors | p50 | p99 | p99.9 | RSS first sample | RSS last | RSS max |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
print(f"| {int(lines):,} | {storage} | {int(rate):,}/s | {run['rps']:,.0f}/s | {run['requests']:,} | {run['errors']} "
      f"| {run['p50_us'] / 1000:.2f} ms | {run['p99_us'] / 1000:.2f} ms | {run['p999_us'] / 1000:.2f} ms "
      f"| {mib(rss[0])} | {mib(rss[-1])} | {mib(max(rss))} |")
print(f"\n{len(rss)} RSS samples over {seconds} s: {', '.join(str(r // 1024) for r in rss)} MiB")
EOF
