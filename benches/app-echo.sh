#!/usr/bin/env bash
# Request/reply through the event layer against raw echo, one run: the same
# engine serves raw WebSocket echo (examples/echo) and emitws.v1 requests
# answered by an `/echo` handler (examples/app_echo), one worker each, pinned
# to core 0; the load tool on core 1 sends raw messages to the one and
# `[1,id,"/echo",data]` to the other (checking every `[2,id,data]`). The two
# take turns within each round; the table shows medians of ROUNDS.
#
# Usage: benches/app-echo.sh      (ROUNDS=3 DURATION=10 SCENARIOS="100:20:1 100:20:8")
# SCENARIOS lists CONNECTIONS:PAYLOAD:IN_FLIGHT. Needs: taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
scenarios="${SCENARIOS:-100:20:1 100:20:8}"
out=target/bench-app-echo
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.cpu

source benches/common.sh
port=9700
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

for round in $(seq "$rounds"); do
  for scenario in $scenarios; do
    IFS=: read -r conns payload in_flight <<<"$scenario"
    for layer in raw app; do
      port=$((port + 1))
      load=(echo --url "ws://127.0.0.1:$port/" --connections "$conns" --payload "$payload" --in-flight "$in_flight")
      if [ "$layer" = raw ]; then
        server=(target/release/examples/echo --workers 1 --addr "127.0.0.1:$port")
        load+=(--text)
      else
        server=(target/release/examples/app_echo --workers 1 --addr "127.0.0.1:$port")
        load+=(--protocol emitws)
      fi
      echo "round $round: $layer, $conns x $payload B, $in_flight in flight" >&2
      pinned_load "$out/$layer-$conns-$payload-$in_flight-$round" "$port" "${server[@]}" -- "${load[@]}"
    done
  done
done

python3 - "$out" "$scenarios" "$ticks_per_sec" "$duration" <<'PY'
import glob, json, statistics, sys
out, scenarios, hz, duration = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), float(sys.argv[4])
WARMUP = 2
print("| connections × payload, in flight | server | round trips/s (median) | vs raw | server CPU µs/round trip | p50 µs | p99 µs | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for scenario in scenarios:
    conns, payload, in_flight = scenario.split(":")
    medians = {}
    for layer in ("raw", "app"):
        runs = []
        for f in sorted(glob.glob(f"{out}/{layer}-{conns}-{payload}-{in_flight}-*.json")):
            run = json.load(open(f))
            ticks = int(open(f[:-5] + ".cpu").read())
            run["cpu_us"] = ticks / hz * 1e6 / max(1.0, run["msgs_per_sec"] * (duration + WARMUP))
            runs.append(run)
        mid = sorted(runs, key=lambda r: r["msgs_per_sec"])[len(runs) // 2]
        mid["cpu_us"] = statistics.median(r["cpu_us"] for r in runs)
        mid["errors"] = sum(r["errors"] for r in runs)
        medians[layer] = mid
    for layer, name in (("raw", "raw echo (examples/echo)"), ("app", "event layer `/echo` (examples/app_echo)")):
        r = medians[layer]
        ratio = r["msgs_per_sec"] / medians["raw"]["msgs_per_sec"]
        print(f"| {conns} × {payload} B, {in_flight} | {name} | {r['msgs_per_sec']:,.0f} | {ratio:.2f}× | "
              f"{r['cpu_us']:.2f} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['errors']} |")
PY
