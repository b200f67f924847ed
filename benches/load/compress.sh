#!/usr/bin/env bash
# Response compression, measured: bytes on the wire (headers and body, as wrk reads
# them) and server CPU per request, per Accept-Encoding (none, gzip, zstd), for single
# values of 256 B, 1 KiB and 8 KiB and for a 100-key batch of generated records. The
# encodings of one workload run one after another within each round (2 s warm-up,
# DURATION s measured) and the report gives medians over ROUNDS, and each encoding's
# CPU as a ratio to identity's in the same round (cancels most of the VM's drift).
#
#   flock /tmp/kvserve-bench.lock benches/load/compress.sh
#   FLAGS="--compress-min-bytes 0" benches/load/compress.sh   # compress everything
#
# Knobs: ROUNDS (3), DURATION (5), CONNECTIONS (16), THREADS (2), FLAGS (extra kvserve
# flags), KV (the kvserve binary, default target/release/kvserve).
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-2}
FLAGS=${FLAGS:-}
WORK=target/bench
API=127.0.0.1:18080
ADMIN=127.0.0.1:19080
mkdir -p "$WORK"
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
if [ -z "${KV:-}" ]; then
  cargo build --release --quiet
  KV=target/release/kvserve
fi
TICKS=$(getconf CLK_TCK)

# The data: 100,000 generated records (short values, for the batch) and 2,000 values
# each of 256 B, 1 KiB and 8 KiB made of words drawn from a 2,000-word vocabulary by a
# Zipf law, so they compress roughly as text does.
DATA="$WORK/compress.data"
if [ ! -f "$DATA" ]; then
  "$KV" gen --lines 100000 --out "$WORK/compress-gen.data" --seed 1
  python3 - "$WORK" <<'PY'
import random, sys, uuid
work = sys.argv[1]
rng = random.Random(1)
letters = "abcdefghijklmnopqrstuvwxyz"
vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(2000)]
weights = [1 / (rank + 1) for rank in range(len(vocab))]
with open(f"{work}/compress-big.data", "w") as out:
    for size in (256, 1024, 8192):
        with open(f"{work}/compress-keys-{size}.txt", "w") as keys:
            for _ in range(2000):
                key = uuid.UUID(int=rng.getrandbits(128), version=4)
                words, length = [], 0
                while length < size:
                    word = rng.choices(vocab, weights)[0]
                    words.append(word)
                    length += len(word) + 1
                out.write(f"{key} {' '.join(words)[:size]}\n")
                keys.write(f"{key}\n")
PY
  cat "$WORK/compress-gen.data" "$WORK/compress-big.data" > "$DATA"
  cut -d' ' -f1 "$WORK/compress-gen.data" > "$WORK/compress-keys-gen.txt"
fi

OUT="$WORK/compress.tsv"
: > "$OUT"
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null || true' EXIT
# shellcheck disable=SC2086 # FLAGS is a list of flags
"$KV" --data "$DATA" --addr "$API" --admin-addr "$ADMIN" --log-level warn $FLAGS \
  > "$WORK/compress.log" 2>&1 &
PID=$!
for _ in $(seq 1 600); do
  curl -sf -o /dev/null "http://$ADMIN/readyz" && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/compress.log" >&2; exit 1; }
  sleep 0.1
done

# measure MODE KEYS ACCEPT: prints CPU µs per request, bytes per response, req/s.
measure() {
  local env=(KEYS_FILE="$2" MODE="$1" ACCEPT="$3")
  env "${env[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s benches/load/compress.lua \
    "http://$API" >/dev/null 2>&1 || true
  local before after out requests bytes
  before=$(awk '{ print $14 + $15 }' "/proc/$PID/stat")
  out=$(env "${env[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" \
    -s benches/load/compress.lua "http://$API" | tail -n 1)
  after=$(awk '{ print $14 + $15 }' "/proc/$PID/stat")
  requests=$(echo "$out" | sed -E 's/.*"requests": ([0-9]+).*/\1/')
  bytes=$(echo "$out" | sed -E 's/.*"bytes": ([0-9]+).*/\1/')
  printf '%s\t%s\t%s' \
    "$(echo "scale=3; ($after - $before) * 1000000 / $TICKS / $requests" | bc)" \
    "$(echo "scale=1; $bytes / $requests" | bc)" \
    "$(echo "$out" | sed -E 's/.*"rps": ([0-9.]+).*/\1/')"
}

for round in $(seq 1 "$ROUNDS"); do
  for workload in value-256 value-1024 value-8192 batch-100; do
    case $workload in
      value-*) mode=value keys="$WORK/compress-keys-${workload#value-}.txt" ;;
      batch-*) mode=batch keys="$WORK/compress-keys-gen.txt" ;;
    esac
    for accept in identity gzip zstd; do
      header=$accept
      [ "$accept" = identity ] && header=
      printf '%s\t%s\t%s\t%s\n' "$round" "$workload" "$accept" \
        "$(measure "$mode" "$keys" "$header")" | tee -a "$OUT" >&2
    done
  done
done

python3 - "$OUT" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
by = {}
for rnd, workload, accept, cpu, size, rps in rows:
    by.setdefault((workload, accept), []).append((int(rnd), float(cpu), float(size), float(rps)))
print(f"{'workload':<12}{'encoding':<10}{'bytes/resp':>12}{'vs identity':>13}"
      f"{'CPU us/req':>12}{'CPU vs identity':>17}{'req/s':>10}")
for workload in dict.fromkeys(w for w, _ in by):
    base = {r: (cpu, size) for r, cpu, size, _ in by[(workload, "identity")]}
    for accept in ("identity", "gzip", "zstd"):
        runs = by[(workload, accept)]
        cpu = statistics.median(c for _, c, _, _ in runs)
        size = statistics.median(s for _, _, s, _ in runs)
        rps = statistics.median(r for _, _, _, r in runs)
        cpu_ratio = statistics.median(c / base[r][0] for r, c, _, _ in runs)
        print(f"{workload:<12}{accept:<10}{size:>12.0f}{size / statistics.median(s for _, s in base.values()):>12.2f}x"
              f"{cpu:>12.1f}{cpu_ratio:>16.2f}x{rps:>10.0f}")
PY
