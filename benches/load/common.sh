# Shared by run.sh and soak.sh (sourced from the repository root): the knobs, the
# release build, the data file and the key sample wrk picks from.
#   LINES (1,000,000)  CONNECTIONS (64)  THREADS (wrk, 2)
#   SAMPLE_KEYS (1,000,000: the keys wrk picks from; ten times the default LRU capacity,
#   so "uniform" is a working set the cache cannot hold and "zipf" one it mostly can)
LINES=${LINES:-1000000}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
SAMPLE_KEYS=${SAMPLE_KEYS:-1000000}
WORK=target/bench
API=127.0.0.1:18080
ADMIN=127.0.0.1:19080
mkdir -p "$WORK"

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
KV=target/release/kvserve

DATA="$WORK/data-$LINES.data"
if [ ! -f "$DATA" ]; then
  echo "generating $DATA" >&2
  "$KV" gen --lines "$LINES" --out "$DATA" --seed 1
fi
SAMPLE="$WORK/keys-$LINES-$SAMPLE_KEYS.txt"
# Every n-th key, at most SAMPLE_KEYS of them: spread over the whole file.
awk -v step=$(( LINES / SAMPLE_KEYS > 0 ? LINES / SAMPLE_KEYS : 1 )) '(NR - 1) % step == 0 { print $1 }' "$DATA" > "$SAMPLE"

# wait_ready URL PID LOG: returns once URL answers 200; if the process PID ends first
# (a refused data file, a port in use), prints LOG and exits.
wait_ready() {
  for _ in $(seq 1 2400); do
    curl -sf -o /dev/null "$1" && return 0
    kill -0 "$2" 2>/dev/null || { cat "$3" >&2; exit 1; }
    sleep 0.05
  done
  echo "not ready after 120 s: $1" >&2
  exit 1
}

# wait_settled LOG: returns once the server logged that its index is in huge pages
# (a second of one core after each load, which a measurement must not be charged
# for), or after 15 s (a build from before that step never logs it).
wait_settled() {
  for _ in $(seq 1 300); do
    grep -q "index moved into huge pages" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
}
