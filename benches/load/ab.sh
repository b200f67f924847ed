#!/usr/bin/env bash
# Interleaved A/B of server CPU per request: the bare hyper baseline and each kvserve
# configuration given, one after another, ROUNDS times (2 s warm-up, DURATION s
# measured, same wrk load). On this noisy VM a figure drifts by 20 % over minutes, so a
# single pass (run.sh) can put two configurations in different weather; alternating
# them and taking medians of the per-round ratios cancels most of that.
#
#   benches/load/ab.sh "" "--cache-capacity 100000" "--storage mmap"
#   LINES=10000000 DIST=zipf benches/load/ab.sh ""
#
# Each argument is one kvserve configuration (extra flags; "" is the default). A
# configuration starting with @PATH runs the kvserve binary at PATH instead of this
# tree's, to compare builds:  benches/load/ab.sh "@../old/target/release/kvserve" ""
# Leading NAME=value words (after @PATH, if any) are environment variables of that run:
#   benches/load/ab.sh "" "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:18200"
# An OTLP endpoint on 127.0.0.1:18200 is served by benches/load/otlp-sink.py, started
# here (it takes every export and answers 200, as a collector would).
# A configuration with --tls-cert is measured over HTTPS; $WORK/tls/{cert,key}.pem (a
# P-256 self-signed pair for 127.0.0.1) are made with openssl if missing:
#   benches/load/ab.sh "" "--tls-cert target/bench/tls/cert.pem --tls-key target/bench/tls/key.pem"
# Knobs: ROUNDS (5), DURATION (8), DIST (uniform|zipf), KEYS_PATH (/v1/keys/%s),
# LOG_LEVEL (unset: the server's default, access log on, as operators run it; e.g.
# "info,kvserve::access=off" to measure without it), and those of benches/load/common.sh.
#
# BATCH=N (N > 0) measures batch lookups instead: every request POSTs N keys from the
# sample to KEYS_PATH (default /v1/keys/batch), the baseline gets the same bodies, and
# the table adds the server CPU per KEY (CPU / (requests × N)):
#   for n in 10 100 1000; do BATCH=$n benches/load/ab.sh "@/tmp/before" ""; done
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
DIST=${DIST:-uniform}
LOG_LEVEL=${LOG_LEVEL:-}
BATCH=${BATCH:-0}
if (( BATCH > 0 )); then
  KEYS_PATH=${KEYS_PATH:-/v1/keys/batch}
  BASE_PATH=/
else
  KEYS_PATH=${KEYS_PATH:-/v1/keys/%s}
  BASE_PATH=/%s
fi
source benches/load/common.sh
cargo build --release --quiet --example baseline
BASE=127.0.0.1:18100
TICKS=$(getconf CLK_TCK)
OUT="$WORK/ab.tsv"
: > "$OUT"

PID=
SINK=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; [ -n "$SINK" ] && kill $SINK 2>/dev/null || true' EXIT
if [[ "$*" == *"$WORK/tls/"* && ! -f "$WORK/tls/key.pem" ]]; then
  mkdir -p "$WORK/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null
fi
if [[ "$*" == *127.0.0.1:18200* ]]; then
  python3 benches/load/otlp-sink.py 18200 &
  SINK=$!
fi

# measure URL PATH_TEMPLATE: one warm-up and one measured wrk run; prints the server
# CPU per request (µs), the rate (req/s) and wrk's p99 latency (µs).
measure() {
  KEYS_FILE="$SAMPLE" KEYS_PATH="$2" KEYS_DIST="$DIST" KEYS_BATCH="$BATCH" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s benches/load/keys.lua "$1" >/dev/null 2>&1 || true
  local before after out requests
  before=$(awk '{ print $14 + $15 }' "/proc/$PID/stat")
  out=$(KEYS_FILE="$SAMPLE" KEYS_PATH="$2" KEYS_DIST="$DIST" KEYS_BATCH="$BATCH" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s benches/load/keys.lua "$1" | tail -n 1)
  after=$(awk '{ print $14 + $15 }' "/proc/$PID/stat")
  # A refused request is cheap: a run with errors would flatter the server.
  if ! echo "$out" | grep -q '"errors": 0,'; then
    echo "warning: $1$2: $out" >&2
  fi
  requests=$(echo "$out" | sed -E 's/.*"requests": ([0-9]+).*/\1/')
  printf '%s\t%s\t%s' "$(echo "scale=3; ($after - $before) * 1000000 / $TICKS / $requests" | bc)" \
    "$(echo "$out" | sed -E 's/.*"rps": ([0-9.]+).*/\1/')" \
    "$(echo "$out" | sed -E 's/.*"p99_us": ([0-9]+).*/\1/')"
}

for round in $(seq 1 "$ROUNDS"); do
  target/release/examples/baseline "$BASE" > "$WORK/baseline.log" 2>&1 &
  PID=$!
  wait_ready "http://$BASE/" "$PID" "$WORK/baseline.log"
  printf '%s\tbaseline\t%s\n' "$round" "$(measure "http://$BASE" "$BASE_PATH")" | tee -a "$OUT" >&2
  kill "$PID"; wait "$PID" 2>/dev/null || true
  for config in "$@"; do
    bin=$KV flags=$config
    if [[ $config == @* ]]; then
      bin=${config%% *} flags=${config#"$bin"} bin=${bin#@}
    fi
    envs=()
    while [[ $flags =~ ^[[:space:]]*([A-Z_][A-Z0-9_]*=[^[:space:]]*)(.*)$ ]]; do
      envs+=("${BASH_REMATCH[1]}") flags=${BASH_REMATCH[2]}
    done
    # shellcheck disable=SC2086 # a configuration is a list of flags
    env "${envs[@]}" "$bin" --data "$DATA" --addr "$API" --admin-addr "$ADMIN" \
      ${LOG_LEVEL:+--log-level "$LOG_LEVEL"} $flags > "$WORK/ab-kvserve.log" 2>&1 &
    PID=$!
    wait_ready "http://$ADMIN/readyz" "$PID" "$WORK/ab-kvserve.log"
    wait_settled "$WORK/ab-kvserve.log"
    scheme=http
    [[ $flags == *--tls-cert* ]] && scheme=https
    printf '%s\tkvserve %s\t%s\n' "$round" "$config" "$(measure "$scheme://$API" "$KEYS_PATH")" | tee -a "$OUT" >&2
    if [[ " ${envs[*]}" == *" OTEL_"* ]]; then
      # Spans lost to a full export queue: the price of sampling more than it can send.
      echo "  spans dropped: $(curl -s "http://$ADMIN/metrics" | awk '$1 == "kvserve_trace_spans_dropped_total" { print $2 }')" >&2
    fi
    kill "$PID"; wait "$PID" 2>/dev/null || true
  done
done
PID=

python3 - "$OUT" "$LINES" "$DIST" "$KEYS_PATH" "$BATCH" <<'EOF'
import statistics, sys
from collections import defaultdict
path, lines, dist, keys_path, batch = sys.argv[1:]
batch = int(batch)
cpu, rate, p99 = defaultdict(dict), defaultdict(dict), defaultdict(dict)  # config -> round -> µs, req/s, µs
for line in open(path):
    round_, config, us, rps, tail = line.rstrip("\n").split("\t")
    cpu[config][round_], rate[config][round_], p99[config][round_] = float(us), float(rps), float(tail)
base = cpu.pop("baseline")
if batch:
    # The baseline answers the same POSTs with its fixed body: its CPU per request is
    # what reading the body and answering costs any hyper server.
    print(f"{int(lines):,} lines, {dist} keys, POST {keys_path} with {batch} keys, {len(base)} rounds:\n")
    print("| server | req/s, median | CPU / request, median | CPU / key, median | each round (µs / key) | median of per-round CPU ratios to baseline |")
    print("|---|---:|---:|---:|---|---:|")
    print(f"| bare hyper baseline | {statistics.median(rate['baseline'].values()):,.0f} | "
          f"{statistics.median(base.values()):.1f} µs | {statistics.median(base.values()) / batch:.3f} µs | "
          f"{', '.join(f'{v / batch:.3f}' for v in base.values())} | 1.00× |")
    for config, rounds in cpu.items():
        ratios = [us / base[r] for r, us in rounds.items() if r in base]
        print(f"| {config.replace('kvserve', '', 1).strip() or 'kvserve (defaults)'} | "
              f"{statistics.median(rate[config].values()):,.0f} | {statistics.median(rounds.values()):.1f} µs | "
              f"{statistics.median(rounds.values()) / batch:.3f} µs | "
              f"{', '.join(f'{v / batch:.3f}' for v in rounds.values())} | {statistics.median(ratios):.2f}× |")
    sys.exit(0)
print(f"{int(lines):,} lines, {dist} keys, GET {keys_path}, {len(base)} rounds:\n")
base_p99 = p99["baseline"]
print("| server | req/s, median | CPU / request, median | each round (µs) | median of per-round CPU ratios to baseline | p99, median | median of per-round p99 ratios |")
print("|---|---:|---:|---|---:|---:|---:|")
print(f"| bare hyper baseline | {statistics.median(rate['baseline'].values()):,.0f} | "
      f"{statistics.median(base.values()):.1f} µs | {', '.join(f'{v:.1f}' for v in base.values())} | 1.00× | "
      f"{statistics.median(base_p99.values()) / 1000:.2f} ms | 1.00× |")
for config, rounds in cpu.items():
    ratios = [us / base[r] for r, us in rounds.items() if r in base]
    tails = [p99[config][r] / base_p99[r] for r in rounds if base_p99.get(r)]
    print(f"| {config.replace('kvserve', '', 1).strip() or 'kvserve (defaults)'} | "
          f"{statistics.median(rate[config].values()):,.0f} | {statistics.median(rounds.values()):.1f} µs | "
          f"{', '.join(f'{v:.1f}' for v in rounds.values())} | {statistics.median(ratios):.2f}× | "
          f"{statistics.median(p99[config].values()) / 1000:.2f} ms | {statistics.median(tails):.2f}× |")
EOF
