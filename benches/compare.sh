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
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
scenarios="${SCENARIOS:-100:20:1 100:20:8 200:16384:1}"
out=target/bench-compare
mkdir -p "$out"
rm -f "$out"/*.json

source benches/common.sh
port=9400
default_servers="${servers[*]} echo-floor${UWS_ECHO:+ uWebSockets}"
read -r -a servers <<<"${SERVERS:-$default_servers}"

pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

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

python3 - "$out" "$scenarios" "$ticks_per_sec" "$duration" "${servers[@]}" <<'PY'
import glob, json, statistics, sys
out, scenarios, ticks_per_sec, duration, servers = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]
WARMUP = 2  # --warmup above

def cpu_us_per_msg(path, run):
    # The server's CPU over the whole run (connect, warm-up, measurement, close)
    # divided by the messages of warm-up plus measurement at the measured rate.
    ticks = int(open(path[:-5] + ".cpu").read())
    return ticks / ticks_per_sec * 1e6 / (run["msgs_per_sec"] * (duration + WARMUP))

FLOOR = "echo-floor"
print("| connections × payload, in flight | server | msgs/s (median) | vs emitws | of echo-floor | server CPU µs/msg | p50 µs | p99 µs | p99.9 µs | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for scenario in scenarios:
    conns, payload, in_flight = scenario.split(":")
    medians = {}
    for server in servers:
        runs = []
        for f in sorted(glob.glob(f"{out}/{server}-{conns}-{payload}-{in_flight}-*.json")):
            run = json.load(open(f))
            run["cpu_us"] = cpu_us_per_msg(f, run)
            runs.append(run)
        best = sorted(runs, key=lambda r: r["msgs_per_sec"])[len(runs) // 2]
        best["cpu_us"] = statistics.median(r["cpu_us"] for r in runs)
        medians[server] = best
    base = medians[servers[0]]["msgs_per_sec"]
    for server in servers:
        r = medians[server]
        ratio = base / r["msgs_per_sec"] if r["msgs_per_sec"] else float("inf")
        label = "1.00×" if server == servers[0] else f"emitws {ratio:.2f}×"
        floor = f"{r['msgs_per_sec'] / medians[FLOOR]['msgs_per_sec']:.2f}×" if FLOOR in medians else ""
        print(f"| {conns} × {payload} B, {in_flight} | {server} | {r['msgs_per_sec']:,.0f} | {label} | {floor} | {r['cpu_us']:.2f} | "
              f"{r['p50_us']} | {r['p99_us']} | {r['p999_us']} | {r['errors']} |")
PY
