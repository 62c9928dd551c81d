#!/usr/bin/env bash
# Side-by-side echo benchmark: emitws vs fastwebsockets vs tokio-tungstenite,
# in one run, on one machine. Each server runs one event loop pinned to core 0;
# the load tool runs pinned to core 1. Servers take turns within each round, so
# a noisy neighbour hurts all of them alike; the table shows medians of ROUNDS.
#
# Usage: benches/compare.sh            (ROUNDS=3 DURATION=10 by default)
# SCENARIOS lists CONNECTIONS:PAYLOAD:IN_FLIGHT triples; IN_FLIGHT is how many
# messages each connection keeps outstanding (1 = strict ping-pong).
# Needs: taskset (util-linux). Prints a markdown table for docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
scenarios="${SCENARIOS:-100:20:1 100:20:8 200:16384:1}"
out=target/bench-compare
mkdir -p "$out"
rm -f "$out"/*.json

source benches/common.sh
port=9400

pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

for round in $(seq "$rounds"); do
  for scenario in $scenarios; do
    IFS=: read -r conns payload in_flight <<<"$scenario"
    for server in "${servers[@]}"; do
      port=$((port + 1))
      # shellcheck disable=SC2086 # the command line is meant to split
      taskset -c 0 ${server_cmd[$server]} "127.0.0.1:$port" >/dev/null &
      pid=$!
      wait_port "$port"
      echo "round $round: $server, $conns connections x $payload B, $in_flight in flight" >&2
      taskset -c 1 target/release/emitws-load echo --url "ws://127.0.0.1:$port/" --connections "$conns" \
        --payload "$payload" --in-flight "$in_flight" --duration "$duration" --warmup 2 --json \
        >"$out/$server-$conns-$payload-$in_flight-$round.json"
      kill "$pid"
      wait "$pid" 2>/dev/null || true
      pid=
    done
  done
done

python3 - "$out" "$scenarios" "${servers[@]}" <<'PY'
import glob, json, statistics, sys
out, scenarios, servers = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
print("| connections × payload, in flight | server | msgs/s (median) | vs emitws | p50 µs | p99 µs | p99.9 µs | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for scenario in scenarios:
    conns, payload, in_flight = scenario.split(":")
    medians = {}
    for server in servers:
        runs = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{server}-{conns}-{payload}-{in_flight}-*.json"))]
        best = sorted(runs, key=lambda r: r["msgs_per_sec"])[len(runs) // 2]
        medians[server] = best
    base = medians[servers[0]]["msgs_per_sec"]
    for server in servers:
        r = medians[server]
        ratio = base / r["msgs_per_sec"] if r["msgs_per_sec"] else float("inf")
        label = "1.00×" if server == servers[0] else f"emitws {ratio:.2f}×"
        print(f"| {conns} × {payload} B, {in_flight} | {server} | {r['msgs_per_sec']:,.0f} | {label} | "
              f"{r['p50_us']} | {r['p99_us']} | {r['p999_us']} | {r['errors']} |")
PY
