#!/usr/bin/env bash
# kvserve next to what users would pick instead, on the same data file and the same wrk
# script (benches/load/keys.lua), in one run:
#   - the bare hyper baseline (examples/baseline.rs), the ceiling;
#   - kvserve with default flags;
#   - Redis behind webdis (its HTTP front), both the Debian packages, loaded with the same
#     lines (MSET of 1,000 pairs per command through `redis-cli --pipe`);
#   - the old service (tests/external/old_service.py: FastAPI under plain uvicorn).
#
#   ROUNDS=5 DURATION=6 benches/load/peers.sh  # 10M lines: 24 min on the loaded 2-core VM
#   LINES=1000000 ROUNDS=1 DURATION=2 BATCHES="10 1000" benches/load/peers.sh   # smoke run
#
# What it measures:
#   1. start-up: time until serving (start → the first 200 carrying a value; for Redis:
#      redis-server start → the file loaded → webdis answers a GET, and again for a
#      restart from the RDB dump Redis saved) and memory (RSS; Redis's `used_memory`);
#   2. GET of one random sample key, ROUNDS interleaved rounds of all servers (2 s warm-up,
#      DURATION s measured each): req/s, server CPU per request (/proc/PID/stat; for webdis
#      that is webdis + redis-server, the honest cost of the pair) and wrk's p99;
#   3. batches of N keys (BATCHES, default "10 100 1000"): kvserve's POST /v1/keys/batch
#      against webdis's GET /MGET/k1/…/kN (the baseline gets kvserve's POST bodies),
#      server CPU per key.
# Results: target/bench/peers.tsv, peers-start.tsv; the tables are printed at the end.
#
# Knobs: ROUNDS (3), DURATION (8), DIST (uniform|zipf), BATCHES ("10 100 1000"; "" skips
# batches), WEBDIS_THREADS (2), OLD (1; 0 leaves the old service out: it needs ~40 s and
# 2.3 GiB at 10M lines), PYTHON (target/pyenv/bin/python, made by `./runner.sh setup`),
# and those of benches/load/common.sh (LINES defaults to 10,000,000 here). Everything
# listens on 127.0.0.1 only; all processes it starts end with it. It installs nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."

LINES=${LINES:-10000000}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
DIST=${DIST:-uniform}
BATCHES=${BATCHES-10 100 1000}
WEBDIS_THREADS=${WEBDIS_THREADS:-2}
OLD=${OLD:-1}
PYTHON=${PYTHON:-target/pyenv/bin/python}

missing=()
for tool in redis-server redis-cli webdis; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if (( ${#missing[@]} )); then
  echo "missing: ${missing[*]}. Install the Debian packages, and keep them from running as services:" >&2
  echo "  sudo apt-get install -y redis-server webdis" >&2
  echo "  sudo systemctl disable --now redis-server webdis" >&2
  exit 2
fi
if [ "$OLD" != 0 ] && ! "$PYTHON" -c 'import fastapi, uvicorn' 2>/dev/null; then
  echo "the old service needs FastAPI and uvicorn in $PYTHON: run ./runner.sh setup" >&2
  echo "(or PYTHON=<a python with fastapi and uvicorn>, or OLD=0 to leave it out)" >&2
  exit 2
fi

export LINES
# shellcheck source=benches/load/common.sh
source benches/load/common.sh
cargo build --release --quiet --example baseline
BASE=127.0.0.1:18100
REDIS_PORT=18379
WEBDIS=127.0.0.1:18380
OLD_ADDR=127.0.0.1:18181
TICKS=$(getconf CLK_TCK)
OUT="$WORK/peers.tsv"
START="$WORK/peers-start.tsv"
: > "$OUT"
: > "$START"
TMP=$(mktemp -d)

BASE_PID='' KV_PID='' REDIS_PID='' WEBDIS_PID='' OLD_PID=''
cleanup() {
  for pid in $BASE_PID $KV_PID $REDIS_PID $WEBDIS_PID $OLD_PID; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
rss_mib() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
cpu_ticks() { # the user + system CPU ticks of the processes given, summed
  local total=0 pid
  for pid in "$@"; do
    total=$(( total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat") ))
  done
  echo "$total"
}
# One key of the file and its value, to check that an answer carries the value.
FIRST=$(head -n 1 "$DATA")
FIRST_KEY=${FIRST%% *} FIRST_VALUE=${FIRST#* }

# wait_value URL PID LOG: returns once URL answers with FIRST_VALUE in the body (a Redis
# still loading answers, but with an error); if PID ends first, prints LOG and exits.
wait_value() {
  for _ in $(seq 1 12000); do
    curl -sf "$1" 2>/dev/null | grep -qF "\"$FIRST_VALUE\"" && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.05
  done
  echo "no value after 600 s: $1" >&2
  exit 1
}
wait_redis() { # until redis-server answers at all (PONG, or LOADING while it reads its dump)
  for _ in $(seq 1 2400); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -qE 'PONG|LOADING' && return 0
    kill -0 "$REDIS_PID" 2>/dev/null || { cat "$TMP/redis.log" >&2; exit 1; }
    sleep 0.05
  done
  echo "redis-server not answering after 120 s" >&2
  exit 1
}

# Redis as a cache of this file would run: no persistence while loading, one RDB dump
# written on request (SAVE) for the restart measurement. The config is printed with the
# results.
cat > "$TMP/redis.conf" <<EOF
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize no
save ""
appendonly no
dir $TMP
dbfilename dump.rdb
logfile $TMP/redis.log
EOF
cat > "$TMP/webdis.json" <<EOF
{
  "redis_host": "127.0.0.1", "redis_port": $REDIS_PORT,
  "http_host": "127.0.0.1", "http_port": ${WEBDIS#*:},
  "threads": $WEBDIS_THREADS, "daemonize": false, "database": 0,
  "verbosity": 1, "logfile": "$TMP/webdis.log"
}
EOF
: > "$TMP/webdis.log"

start_webdis() {
  webdis "$TMP/webdis.json" > "$TMP/webdis.out" 2>&1 &
  WEBDIS_PID=$!
}

# --- 1. start-up and memory -------------------------------------------------------------
echo "start-up: kvserve (default flags), $LINES lines" >&2
t0=$(now)
"$KV" --data "$DATA" --addr "$API" --admin-addr "$ADMIN" > "$WORK/peers-kvserve.log" 2>&1 &
KV_PID=$!
wait_ready "http://$ADMIN/readyz" "$KV_PID" "$WORK/peers-kvserve.log"
t_ready=$(since "$t0")
wait_settled "$WORK/peers-kvserve.log" # memory as it stays, after the index's huge pages
printf 'kvserve\t%s\t%s\t\n' "$t_ready" "$(rss_mib "$KV_PID")" | tee -a "$START" >&2

echo "start-up: redis-server + webdis, loading $LINES lines with MSET through redis-cli --pipe" >&2
t0=$(now)
redis-server "$TMP/redis.conf" &
REDIS_PID=$!
wait_redis
start_webdis
# RESP from the data file: MSET commands of up to 1,000 pairs, each value the rest of
# the line after the first space (byte lengths: LC_ALL=C).
total=$(grep -c . "$DATA")
LC_ALL=C awk -v B=1000 -v total="$total" '
  length($0) == 0 { next }
  {
    if (n % B == 0) { c = total - n < B ? total - n : B; printf "*%d\r\n$4\r\nMSET\r\n", 2 * c + 1 }
    n++
    i = index($0, " ")
    if (i == 0) { k = $0; v = "" } else { k = substr($0, 1, i - 1); v = substr($0, i + 1) }
    printf "$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, length(v), v
  }' "$DATA" | timeout 900 redis-cli -p "$REDIS_PORT" --pipe > "$TMP/pipe.log"
loaded=$(since "$t0")
wait_value "http://$WEBDIS/GET/$FIRST_KEY" "$WEBDIS_PID" "$TMP/webdis.log"
serving=$(since "$t0")
keys=$(redis-cli -p "$REDIS_PORT" dbsize)
(( keys == total )) || { echo "Redis holds $keys keys, the file $total" >&2; cat "$TMP/pipe.log" >&2; exit 1; }
used=$(redis-cli -p "$REDIS_PORT" info memory | awk -F: '/^used_memory:/ { printf "%.0f", $2 / 1048576 }')
printf 'redis+webdis, loaded from the file\t%s\t%s\t%s\n' "$serving" "$(( $(rss_mib "$REDIS_PID") + $(rss_mib "$WEBDIS_PID") ))" \
  "file loaded in $loaded s; redis-server RSS $(rss_mib "$REDIS_PID") MiB, used_memory $used MiB; webdis RSS $(rss_mib "$WEBDIS_PID") MiB" \
  | tee -a "$START" >&2

echo "start-up: redis-server + webdis again, from the RDB dump" >&2
t0=$(now)
redis-cli -p "$REDIS_PORT" save > /dev/null
saved=$(since "$t0")
kill "$WEBDIS_PID" "$REDIS_PID"
wait "$WEBDIS_PID" "$REDIS_PID" 2>/dev/null || true
t0=$(now)
redis-server "$TMP/redis.conf" &
REDIS_PID=$!
wait_redis
start_webdis
wait_value "http://$WEBDIS/GET/$FIRST_KEY" "$WEBDIS_PID" "$TMP/webdis.log"
printf 'redis+webdis, restarted from its RDB dump\t%s\t%s\t%s\n' "$(since "$t0")" \
  "$(( $(rss_mib "$REDIS_PID") + $(rss_mib "$WEBDIS_PID") ))" \
  "dump $(( $(stat -c %s "$TMP/dump.rdb") / 1048576 )) MiB, written by SAVE in $saved s; redis-server RSS $(rss_mib "$REDIS_PID") MiB" \
  | tee -a "$START" >&2

if [ "$OLD" != 0 ]; then
  echo "start-up: the old service (FastAPI, uvicorn)" >&2
  t0=$(now)
  "$PYTHON" tests/external/old_service.py "$DATA" "${OLD_ADDR#*:}" > "$WORK/peers-old.log" 2>&1 &
  OLD_PID=$!
  wait_value "http://$OLD_ADDR/get_value/$FIRST_KEY" "$OLD_PID" "$WORK/peers-old.log"
  printf 'old service\t%s\t%s\t\n' "$(since "$t0")" "$(rss_mib "$OLD_PID")" | tee -a "$START" >&2
fi

target/release/examples/baseline "$BASE" > "$WORK/peers-baseline.log" 2>&1 &
BASE_PID=$!
wait_ready "http://$BASE/" "$BASE_PID" "$WORK/peers-baseline.log"

# --- 2. and 3. load -------------------------------------------------------------------
# measure BATCH JOIN TARGET PATH PID...: one warm-up and one measured wrk run; prints the
# CPU per request (µs) of all PIDs, of the first one alone, the rate (req/s) and p99 (µs).
measure() {
  local batch=$1 join=$2 target=$3 path=$4
  shift 4
  local env=(KEYS_FILE="$SAMPLE" KEYS_PATH="$path" KEYS_DIST="$DIST" KEYS_BATCH="$batch")
  [ -n "$join" ] && env+=(KEYS_BATCH_JOIN="$join")
  env "${env[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s benches/load/keys.lua "http://$target" >/dev/null 2>&1 || true
  local before first_before after first_after out requests
  before=$(cpu_ticks "$@") first_before=$(cpu_ticks "$1")
  out=$(env "${env[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s benches/load/keys.lua "http://$target" | tail -n 1)
  after=$(cpu_ticks "$@") first_after=$(cpu_ticks "$1")
  # A refused request is cheap: a run with errors would flatter the server.
  if ! echo "$out" | grep -q '"errors": 0,'; then
    echo "warning: $target$path: $out" >&2
  fi
  requests=$(echo "$out" | sed -E 's/.*"requests": ([0-9]+).*/\1/')
  printf '%s\t%s\t%s\t%s' \
    "$(echo "scale=3; ($after - $before) * 1000000 / $TICKS / $requests" | bc)" \
    "$(echo "scale=3; ($first_after - $first_before) * 1000000 / $TICKS / $requests" | bc)" \
    "$(echo "$out" | sed -E 's/.*"rps": ([0-9.]+).*/\1/')" \
    "$(echo "$out" | sed -E 's/.*"p99_us": ([0-9]+).*/\1/')"
}

for round in $(seq 1 "$ROUNDS"); do
  printf 'get\t%s\tbaseline\t%s\n' "$round" "$(measure 0 "" "$BASE" "/%s" "$BASE_PID")" | tee -a "$OUT" >&2
  printf 'get\t%s\tkvserve\t%s\n' "$round" "$(measure 0 "" "$API" "/v1/keys/%s" "$KV_PID")" | tee -a "$OUT" >&2
  printf 'get\t%s\twebdis\t%s\n' "$round" "$(measure 0 "" "$WEBDIS" "/GET/%s" "$WEBDIS_PID" "$REDIS_PID")" | tee -a "$OUT" >&2
  if [ -n "$OLD_PID" ]; then
    printf 'get\t%s\told\t%s\n' "$round" "$(measure 0 "" "$OLD_ADDR" "/get_value/%s" "$OLD_PID")" | tee -a "$OUT" >&2
  fi
done
for n in $BATCHES; do
  # webdis takes the whole MGET in its URL (n × 37 bytes): check it answers all n values.
  path=/MGET/$(head -n "$n" "$SAMPLE" | paste -sd/)
  got=$(curl -s "http://$WEBDIS$path" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["MGET"]))' 2>/dev/null || echo 0)
  (( got == n )) || echo "warning: webdis answered $got of $n keys in one MGET URL of ${#path} bytes" >&2
  for round in $(seq 1 "$ROUNDS"); do
    printf 'batch %s\t%s\tbaseline\t%s\n' "$n" "$round" "$(measure "$n" "" "$BASE" / "$BASE_PID")" | tee -a "$OUT" >&2
    printf 'batch %s\t%s\tkvserve\t%s\n' "$n" "$round" "$(measure "$n" "" "$API" /v1/keys/batch "$KV_PID")" | tee -a "$OUT" >&2
    printf 'batch %s\t%s\twebdis\t%s\n' "$n" "$round" "$(measure "$n" / "$WEBDIS" "/MGET/%s" "$WEBDIS_PID" "$REDIS_PID")" | tee -a "$OUT" >&2
  done
done

echo "redis-server: $(redis-server --version)" >&2
echo "redis.conf: $(grep -v -e '^dir' -e '^logfile' "$TMP/redis.conf" | paste -sd';')" >&2
echo "webdis $(dpkg-query -W -f '${Version}' webdis 2>/dev/null || echo '(version unknown)'), threads $WEBDIS_THREADS" >&2
echo "kvserve $(git rev-parse --short HEAD), default flags; total $SECONDS s" >&2
python3 - "$START" "$OUT" "$LINES" "$DIST" <<'EOF'
import statistics, sys
from collections import defaultdict
start, path, lines, dist = sys.argv[1:]
names = {"baseline": "bare hyper baseline", "kvserve": "kvserve (default flags)",
         "webdis": "webdis + redis-server", "old": "old service (FastAPI, uvicorn)"}
print(f"{int(lines):,} lines:\n")
print("| server | time until serving | RSS | notes |")
print("|---|---:|---:|---|")
for line in open(start):
    server, seconds, rss, notes = line.rstrip("\n").split("\t")
    print(f"| {server} | {float(seconds):.2f} s | {int(rss):,} MiB | {notes} |")
# section -> server -> round -> (CPU µs, first pid's CPU µs, req/s, p99 µs)
runs = defaultdict(lambda: defaultdict(dict))
for line in open(path):
    section, round_, server, *figures = line.rstrip("\n").split("\t")
    runs[section][server][round_] = tuple(map(float, figures))
med = lambda rounds, i: statistics.median(v[i] for v in rounds.values())
for section, servers in runs.items():
    base = servers["baseline"]
    batch = int(section.split()[1]) if section.startswith("batch") else 0
    print()
    if batch:
        print(f"{dist} keys, {batch} keys a request: kvserve POST /v1/keys/batch, webdis GET /MGET/k1/…/k{batch}, "
              f"the baseline the same POSTs as kvserve, {len(base)} rounds:\n")
        print("| server | req/s, median | CPU / request, median | CPU / key, median | each round (µs / key) "
              "| median of per-round CPU ratios to baseline | p99, median |")
        print("|---|---:|---:|---:|---|---:|---:|")
    else:
        print(f"{dist} keys, GET of one key (baseline /KEY, kvserve /v1/keys/KEY, webdis /GET/KEY, "
              f"old service /get_value/KEY), {len(base)} rounds:\n")
        print("| server | req/s, median | CPU / request, median | each round (µs) "
              "| median of per-round CPU ratios to baseline | p99, median | median of per-round p99 ratios |")
        print("|---|---:|---:|---|---:|---:|---:|")
    for server, rounds in servers.items():
        ratios = [v[0] / base[r][0] for r, v in rounds.items() if r in base]
        tails = [v[3] / base[r][3] for r, v in rounds.items() if r in base and base[r][3]]
        cpu = f"{med(rounds, 0):.1f} µs"
        if server == "webdis":
            cpu += f" (webdis {med(rounds, 1):.1f}, redis {med(rounds, 0) - med(rounds, 1):.1f})"
        if batch:
            print(f"| {names[server]} | {med(rounds, 2):,.0f} | {cpu} | {med(rounds, 0) / batch:.3f} µs | "
                  f"{', '.join(f'{v[0] / batch:.3f}' for v in rounds.values())} | {statistics.median(ratios):.2f}× | "
                  f"{med(rounds, 3) / 1000:.2f} ms |")
        else:
            print(f"| {names[server]} | {med(rounds, 2):,.0f} | {cpu} | "
                  f"{', '.join(f'{v[0]:.1f}' for v in rounds.values())} | {statistics.median(ratios):.2f}× | "
                  f"{med(rounds, 3) / 1000:.2f} ms | {statistics.median(tails):.2f}× |")
EOF
