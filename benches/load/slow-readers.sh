#!/usr/bin/env bash
# What never-reading clients can make kvserve hold (issue: bound what one client can
# cost). A release kvserve with default flags; 1,000 connections (slow_readers.py: a
# 4 KiB receive buffer and 1460-byte segments each) ask and never read, per phase:
#
#   docs      GET /docs (1.7 MB page) and GET /openapi.json, alternately
#   batch     POST /v1/keys/batch answered with ~1 MiB each
#   heads     an unfinished request head of 40 KB each (within the 49 KiB head buffer,
#             held until --header-read-timeout, here 60 s)
#   long-heads  an unfinished request head of 300 KB each (over the head buffer)
#   spans     traces on, every request sampled, 30 KiB User-Agents (under
#             --max-header-bytes), a collector that
#             accepts connections and never answers; 3,000 requests sent and read
#
# Each phase holds its connections for HOLD seconds (10) and reports the server's RSS
# before, at its maximum and the bound the flags set. Prints a Markdown table for
# BENCHMARKS.md. Bounded in time (about a minute) and on 127.0.0.1 only.
#
#   benches/load/slow-readers.sh
#   CLIENTS=300 HOLD=5 benches/load/slow-readers.sh
#   KV=/path/to/an/older/kvserve benches/load/slow-readers.sh   # the same against another build
set -euo pipefail
cd "$(dirname "$0")/../.."

CLIENTS=${CLIENTS:-1000}
HOLD=${HOLD:-10}
WORK=target/bench
API=127.0.0.1:18081
ADMIN=127.0.0.1:19081
SINK=127.0.0.1:18082
mkdir -p "$WORK"
ulimit -n 8192

if [ -z "${KV:-}" ]; then
  cargo build --release --quiet
  KV=target/release/kvserve
fi

# 20,000 keys with 1 KiB values: a batch of 1,000 of them answers ~1.06 MB.
DATA="$WORK/slow-readers.data"
if [ ! -f "$DATA" ]; then
  python3 - "$DATA" <<'EOF'
import sys, uuid, random
rng = random.Random(1)
with open(sys.argv[1], "w") as out:
    for _ in range(20000):
        key = uuid.UUID(int=rng.getrandbits(128), version=4)
        out.write(f"{key} {'v' * 1024}\n")
EOF
fi
REQ="$WORK/slow-readers-req"
mkdir -p "$REQ"
printf 'GET /docs HTTP/1.1\r\nHost: x\r\n\r\n' > "$REQ/docs"
printf 'GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n' > "$REQ/spec"
python3 - "$DATA" "$REQ" <<'EOF'
import json, random, sys
keys = [line.split(" ", 1)[0] for line in open(sys.argv[1])]
rng = random.Random(2)
for i in range(4):
    body = json.dumps({"keys": rng.sample(keys, 1000)})
    head = (f"POST /v1/keys/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    open(f"{sys.argv[2]}/batch{i}", "w").write(head + body)
open(f"{sys.argv[2]}/head", "w").write("GET /livez HTTP/1.1\r\nHost: x\r\nX-Filler: " + "f" * 40000)
open(f"{sys.argv[2]}/long-head", "w").write("GET /livez HTTP/1.1\r\nHost: x\r\nX-Filler: " + "f" * 300000)
EOF

PID=
SINK_PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null || true
}
trap cleanup EXIT

start() { # extra args...
  "$KV" --data "$DATA" --addr "$API" --admin-addr "$ADMIN" --header-read-timeout 60s \
    --log-level "warn" "$@" > "$WORK/slow-readers.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 400); do
    curl -sf -o /dev/null "http://$ADMIN/readyz" && return 0
    sleep 0.05
  done
  cat "$WORK/slow-readers.log" >&2
  exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
# Warm the documents' compressed forms and the allocator once, as a running server is.
warm() { for path in /docs /openapi.json; do curl -s -o /dev/null "http://$API$path"; done; }

RESULTS="$WORK/slow-readers.jsonl"
: > "$RESULTS"
phase() { # name bound requests...
  local name=$1 bound=$2; shift 2
  local out
  out=$(python3 benches/load/slow_readers.py "$API" "$PID" "$CLIENTS" "$HOLD" "$@")
  echo "$name: $out" >&2
  printf '{"phase": "%s", "bound": "%s", "result": %s}\n' "$name" "$bound" "$out" >> "$RESULTS"
}

# Each phase on a fresh server, so memory freed by one is not reused by the next.
start; warm
phase docs "shared: no copy per reader" "$REQ/docs" "$REQ/spec"
stop
start; warm
phase batch "--max-unsent-bytes 256 MiB" "$REQ/batch0" "$REQ/batch1" "$REQ/batch2" "$REQ/batch3"
REFUSED=$(curl -s "http://$ADMIN/metrics" | awk '/^kvserve_http_answers_refused_total\{reason="unsent_budget"\}/ { print $2 }')
stop
start; warm
phase heads "--max-uri-bytes + --max-header-bytes + 1 KiB = 49 KiB each" "$REQ/head"
stop
start; warm
phase long-heads "431 once a head fills the 49 KiB buffer" "$REQ/long-head"
stop

# Spans: a collector that accepts and never answers; every request sampled.
python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
host, port = sys.argv[1].split(":"); s.bind((host, int(port))); s.listen(64)
held = []
while True:
    held.append(s.accept()[0])
' "$SINK" &
SINK_PID=$!
OTEL_EXPORTER_OTLP_ENDPOINT="http://$SINK" OTEL_TRACES_SAMPLER=always_on start
BEFORE=$(awk '/VmRSS/ { print $2 }' "/proc/$PID/status")
PEAK=$(python3 - "$API" "$PID" <<'EOF'
import concurrent.futures, http.client, sys
host, port = sys.argv[1].split(":")
pid = sys.argv[2]
agent = "u" * 30000
def rss():
    return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")).split()[1])
def one(_):
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/livez", headers={"User-Agent": agent})
        conn.getresponse().read()
    except OSError:
        pass
    finally:
        conn.close()
peak = rss()
with concurrent.futures.ThreadPoolExecutor(16) as pool:
    for batch in range(30):
        list(pool.map(one, range(100)))
        peak = max(peak, rss())
print(peak)
EOF
)
DROPPED=$(curl -s "http://$ADMIN/metrics" | awk '/^kvserve_trace_spans_dropped_total/ { print $2 }')
printf '{"phase": "spans", "bound": "--trace-buffer 8 MiB", "result": {"connections": 3000, "rss_before_kib": %s, "rss_max_kib": %s, "rss_last_kib": %s, "refused": 0, "dropped": %s}}\n' \
  "$BEFORE" "$PEAK" "$PEAK" "${DROPPED:-0}" >> "$RESULTS"
stop

python3 - "$RESULTS" "$CLIENTS" "$HOLD" "${REFUSED:-0}" "$KV" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
mib = lambda kib: f"{kib / 1024:,.0f} MiB"
print(f"{sys.argv[2]} never-reading clients per phase, held {sys.argv[3]} s; {sys.argv[5]}, default flags; "
      f"batch answers refused for the budget: {sys.argv[4]}")
print()
print("| phase | clients | RSS before | RSS max | grown | per client | bound |")
print("|---|---:|---:|---:|---:|---:|---|")
for row in rows:
    r = row["result"]
    grown = r["rss_max_kib"] - r["rss_before_kib"]
    per = grown * 1024 / max(r["connections"], 1)
    extra = f" ({r['dropped']:.0f} spans dropped)" if "dropped" in r else ""
    print(f"| {row['phase']} | {r['connections']:,} | {mib(r['rss_before_kib'])} | {mib(r['rss_max_kib'])} "
          f"| {mib(grown)} | {per / 1024:,.1f} KiB | {row['bound']}{extra} |")
EOF
