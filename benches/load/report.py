#!/usr/bin/env python3
"""Turns target/bench/results.jsonl (from benches/load/run.sh) into Markdown tables."""

import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
servers = [r for r in rows if "server" in r]
scenarios = [r for r in rows if "scenario" in r]
base = next((r for r in scenarios if r["scenario"] == "baseline"), None)

print("### Start-up and memory\n")
print("| server | lines | time to ready | RSS | anonymous RSS | (RSS − file) / key | anonymous / key |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in servers:
    if r["server"] == "baseline":
        continue
    rss, anon = r["rss_kb"] * 1024, r["anon_kb"] * 1024
    print(f"| {r['server']} | {r['lines']:,} | {r['ready_s']:.2f} s | {rss / 2**20:,.0f} MiB | {anon / 2**20:,.0f} MiB "
          f"| {(rss - r['file_bytes']) / r['lines']:.1f} B | {anon / r['lines']:.1f} B |")

print("\n### HTTP (wrk, 64 connections, loopback, 2 cores shared with wrk)\n")
print("| scenario | req/s | p50 | p99 | p99.9 | server CPU / request | CPU ratio to baseline |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in scenarios:
    ratio = f"{r['cpu_us_per_req'] / base['cpu_us_per_req']:.2f}×" if base else "–"
    errors = f" ({r['errors']} errors)" if r.get("errors") else ""
    print(f"| {r['scenario']}{errors} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.2f} ms | {r['p99_us'] / 1000:.2f} ms "
          f"| {r['p999_us'] / 1000:.2f} ms | {r['cpu_us_per_req']:.1f} µs | {ratio} |")
