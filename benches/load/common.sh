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
