#!/usr/bin/env python3
"""gap.py DIR NAME...: server CPU per request by part, from DIR/NAME.perf (perf record
at 999 Hz over 8 s) and DIR/NAME.wrk (the rate over the run), as a Markdown table.
Used by benches/load/gap.sh."""
import collections
import re
import subprocess
import sys

HZ, WINDOW_S = 999, 8

# Leaf symbol → part of the request, first match wins.
PARTS = [
    ("logging (tracing, access line, writer)", r"kvserve::telemetry|tracing"),
    ("metrics (prometheus)", r"prometheus"),
    ("poem", r"poem"),
    ("lookup (index probe, value end)", r"kvserve::dataset|memchr|ahash|dashmap|hashbrown"),
    ("kvserve: pipeline, rendering, connection", r"kvserve::"),
    ("hyper, http, bytes", r"hyper::|http::|httparse|bytes::|itoa"),
    ("tokio, mio", r"tokio::|mio::"),
    ("libc: allocation, copies, clock, syscall stubs",
     r"malloc|free|_int_|tcache|memmove|memcpy|memset|memcmp|__libc|epoll|clock|vdso|pthread|syscall|__GI|writev|recv|send|unlink_chunk"),
]


def part(dso: str, symbol: str) -> str:
    if dso.startswith("[kernel"):
        return "kernel: TCP, syscalls, scheduler"
    for name, pattern in PARTS:
        if re.search(pattern, symbol):
            return name
    return "other"


def main() -> None:
    folder, names = sys.argv[1], sys.argv[2:]
    rows = {}
    for name in names:
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", open(f"{folder}/{name}.wrk").read()).group(1))
        report = subprocess.run(
            ["perf", "report", "-i", f"{folder}/{name}.perf", "--no-children", "-n",
             "--sort", "dso,sym", "--stdio", "-g", "none"],
            capture_output=True, text=True, check=True).stdout
        parts, total = collections.Counter(), 0
        for line in report.splitlines():
            m = re.match(r"\s+[\d.]+%\s+(\d+)\s+(\S+)\s+\[.\]\s+(.*)", line)
            if m:
                samples = int(m.group(1))
                total += samples
                parts[part(m.group(2), m.group(3))] += samples
        per_request = 1e6 / HZ / (rate * WINDOW_S)
        rows[name] = (rate, {k: v * per_request for k, v in parts.items()}, total * per_request)
    order = sorted({p for _, parts, _ in rows.values() for p in parts}, key=lambda p: -rows[names[-1]][1].get(p, 0))
    print("| part | " + " | ".join(f"{n}, µs / request" for n in names) + " |")
    print("|---|" + "---:|" * len(names))
    for p in order:
        print(f"| {p} | " + " | ".join(f"{rows[n][1].get(p, 0):.2f}" for n in names) + " |")
    print("| **total** | " + " | ".join(f"**{rows[n][2]:.2f}**" for n in names) + " |")
    print("| req/s (wrk) | " + " | ".join(f"{rows[n][0]:,.0f}" for n in names) + " |")


if __name__ == "__main__":
    main()
