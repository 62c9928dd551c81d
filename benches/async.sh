#!/usr/bin/env bash
# Async handlers against sync ones, request/reply (feature `tokio`): the
# same server (examples/async_echo) answers `[1,id,"/echo",data]` with a sync
# handler (`--mode sync`) or an async one (`--mode async`: a future on the
# app's tokio runtime, its reply a deferred one back through the worker's
# inbox, so replies to requests in flight come in the order they end: the
# load tool takes them by id, --any-order). One worker and one runtime
# thread, both pinned to core 0 (the server's CPU counts both); the load
# tool on core 1 checks every reply. The two modes take turns within each
# round; the table shows medians of ROUNDS.
#
# Usage: benches/async.sh      (ROUNDS=3 DURATION=10 SCENARIOS="100:20:1 100:20:8")
# SCENARIOS lists CONNECTIONS:PAYLOAD:IN_FLIGHT. Needs: taskset.
# Instructions per round trip: benches/callgrind.sh with ASYNC=1.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
scenarios="${SCENARIOS:-100:20:1 100:20:8}"
out=target/bench-async
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.cpu

ONLY_HELPERS=1 source benches/common.sh
cargo build -q --release --features tokio --example async_echo
cargo build -q --release -p emitws-tools --bin emitws-load
port=9750
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

for round in $(seq "$rounds"); do
  for scenario in $scenarios; do
    IFS=: read -r conns payload in_flight <<<"$scenario"
    for mode in sync async; do
      port=$((port + 1))
      server=(target/release/examples/async_echo --mode "$mode" --workers 1 --async-threads 1 --addr "127.0.0.1:$port")
      load=(echo --url "ws://127.0.0.1:$port/" --connections "$conns" --payload "$payload" --in-flight "$in_flight" --protocol emitws --any-order)
      echo "round $round: $mode, $conns x $payload B, $in_flight in flight" >&2
      pinned_load "$out/$mode-$conns-$payload-$in_flight-$round" "$port" "${server[@]}" -- "${load[@]}"
    done
  done
done

python3 - "$out" "$scenarios" "$ticks_per_sec" "$duration" <<'PY'
import glob, json, statistics, sys
out, scenarios, hz, duration = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), float(sys.argv[4])
WARMUP = 2
print("| connections × payload, in flight | handler | round trips/s (median) | vs sync | server CPU µs/round trip | p50 µs | p99 µs | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for scenario in scenarios:
    conns, payload, in_flight = scenario.split(":")
    medians = {}
    for mode in ("sync", "async"):
        runs = []
        for f in sorted(glob.glob(f"{out}/{mode}-{conns}-{payload}-{in_flight}-*.json")):
            run = json.load(open(f))
            ticks = int(open(f[:-5] + ".cpu").read())
            run["cpu_us"] = ticks / hz * 1e6 / max(1.0, run["msgs_per_sec"] * (duration + WARMUP))
            runs.append(run)
        mid = sorted(runs, key=lambda r: r["msgs_per_sec"])[len(runs) // 2]
        mid["cpu_us"] = statistics.median(r["cpu_us"] for r in runs)
        mid["errors"] = sum(r["errors"] for r in runs)
        medians[mode] = mid
    for mode, name in (("sync", "`on` (sync)"), ("async", "`on_async`")):
        r = medians[mode]
        ratio = r["msgs_per_sec"] / medians["sync"]["msgs_per_sec"]
        print(f"| {conns} × {payload} B, {in_flight} | {name} | {r['msgs_per_sec']:,.0f} | {ratio:.2f}× | "
              f"{r['cpu_us']:.2f} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['errors']} |")
PY
