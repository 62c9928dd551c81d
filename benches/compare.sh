#!/usr/bin/env bash
# Side-by-side echo benchmark: emitws vs fastwebsockets vs tokio-tungstenite
# vs echo-floor (benches/peers: one read, unmask, one write per event; the
# kernel's floor for ping-pong) and, when UWS_ECHO is set, uWebSockets, in one
# run, on one machine. Each server runs one event loop pinned to core 0; the
# load tool (raw messages, no envelope) runs pinned to core 1. Servers take
# turns within each round, so a noisy neighbour hurts all of them alike; the
# table shows medians of ROUNDS, each server's rate as a ratio of emitws's
# and of echo-floor's.
#
# Usage: benches/compare.sh            (ROUNDS=3 DURATION=10 by default)
# SCENARIOS lists CONNECTIONS:PAYLOAD:IN_FLIGHT triples; IN_FLIGHT is how many
# messages each connection keeps outstanding (1 = strict ping-pong).
# SERVERS picks the servers (emitws first; default all of them).
# UWS_ECHO=/tmp/uws/echo adds a uWebSockets echo server built as described in
# docs/BENCHMARKS.md, "Fan-out against uWebSockets" (not in this repository).
# Needs: taskset (util-linux). Prints a markdown table for docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
bench_setup compare "100:20:1 100:20:8 200:16384:1"
port=9400
default_servers="${servers[*]} echo-floor${UWS_ECHO:+ uWebSockets}"
read -r -a servers <<<"${SERVERS:-$default_servers}"

for round in $(seq "$rounds"); do
  for scenario in $scenarios; do
    IFS=: read -r conns payload in_flight <<<"$scenario"
    for server in "${servers[@]}"; do
      port=$((port + 1))
      echo "round $round: $server, $conns connections x $payload B, $in_flight in flight" >&2
      # shellcheck disable=SC2086 # the command line is meant to split
      pinned_load "$out/$server-$conns-$payload-$in_flight-$round" "$port" ${server_cmd[$server]} "127.0.0.1:$port" -- \
        echo --url "ws://127.0.0.1:$port/" --connections "$conns" --payload "$payload" --in-flight "$in_flight"
    done
  done
done

bench_medians "${servers[@]}" >"$out/medians.json"
python3 - "$out/medians.json" "${servers[@]}" <<'PY'
import json, sys
medians, servers = json.load(open(sys.argv[1])), sys.argv[2:]
FLOOR = "echo-floor"
print("| connections × payload, in flight | server | msgs/s (median) | vs emitws | of echo-floor | server CPU µs/msg | p50 µs | p99 µs | p99.9 µs | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for scenario, runs in medians.items():
    conns, payload, in_flight = scenario.split(":")
    base = runs[servers[0]]["msgs_per_sec"]
    for server in servers:
        r = runs[server]
        ratio = base / r["msgs_per_sec"] if r["msgs_per_sec"] else float("inf")
        label = "1.00×" if server == servers[0] else f"emitws {ratio:.2f}×"
        floor = f"{r['msgs_per_sec'] / runs[FLOOR]['msgs_per_sec']:.2f}×" if FLOOR in runs else ""
        print(f"| {conns} × {payload} B, {in_flight} | {server} | {r['msgs_per_sec']:,.0f} | {label} | {floor} | {r['cpu_us']:.2f} | "
              f"{r['p50_us']} | {r['p99_us']} | {r['p999_us']} | {r['errors']} |")
PY
