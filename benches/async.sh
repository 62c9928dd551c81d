#!/usr/bin/env bash
# Async handlers against sync ones, request/reply (feature `tokio`): the
# same server (examples/async_echo) answers `[1,id,"/echo",data]` with a sync
# handler (`--mode sync`) or an async one (`--mode async`: a future on the
# app's tokio runtime, its reply a deferred one back through the worker's
# inbox, so replies to requests in flight come in the order they end: the
# load tool takes them by id, --any-order). One worker and one runtime
# thread, both pinned to core 0 (the server's CPU counts both); the load
# tool on core 1 checks every reply. The two modes take turns within each
# round; the table shows medians of ROUNDS. With
# SOCKETIO=benches/peers/target/release/echo-socketioxide, socketioxide
# takes a turn too (Socket.IO's `echo` event acknowledged, its handler a
# spawned task: benches/peers/README.md), pinned the same way.
#
# Usage: benches/async.sh      (ROUNDS=3 DURATION=10 SCENARIOS="100:20:1 100:20:8")
# SCENARIOS lists CONNECTIONS:PAYLOAD:IN_FLIGHT. Needs: taskset.
# Instructions per round trip: benches/callgrind.sh with ASYNC=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY_HELPERS=1 source benches/common.sh
cargo build -q --release --features tokio --example async_echo
cargo build -q --release -p emitws-tools --bin emitws-load
bench_setup async "100:20:1 100:20:8"
port=9750
modes=(sync async)
[ -z "${SOCKETIO:-}" ] || modes+=(socketioxide)

for round in $(seq "$rounds"); do
  for scenario in $scenarios; do
    IFS=: read -r conns payload in_flight <<<"$scenario"
    for mode in "${modes[@]}"; do
      port=$((port + 1))
      load=(echo --connections "$conns" --payload "$payload" --in-flight "$in_flight" --any-order)
      if [ "$mode" = socketioxide ]; then
        server=("$SOCKETIO" "127.0.0.1:$port")
        load+=(--url "ws://127.0.0.1:$port/socket.io/?EIO=4&transport=websocket" --protocol socketio)
      else
        server=(target/release/examples/async_echo --mode "$mode" --workers 1 --async-threads 1 --addr "127.0.0.1:$port")
        load+=(--url "ws://127.0.0.1:$port/" --protocol emitws)
      fi
      echo "round $round: $mode, $conns x $payload B, $in_flight in flight" >&2
      pinned_load "$out/$mode-$conns-$payload-$in_flight-$round" "$port" "${server[@]}" -- "${load[@]}"
    done
  done
done

bench_medians "${modes[@]}" >"$out/medians.json"
python3 - "$out/medians.json" <<'PY'
import json, sys
medians = json.load(open(sys.argv[1]))
print("| connections × payload, in flight | handler | round trips/s (median) | vs sync | server CPU µs/round trip | p50 µs | p99 µs | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for scenario, runs in medians.items():
    conns, payload, in_flight = scenario.split(":")
    names = (("sync", "`on` (sync)"), ("async", "`on_async`"), ("socketioxide", "socketioxide"))
    for mode, name in ((mode, name) for mode, name in names if mode in runs):
        r = runs[mode]
        ratio = r["msgs_per_sec"] / runs["sync"]["msgs_per_sec"]
        print(f"| {conns} × {payload} B, {in_flight} | {name} | {r['msgs_per_sec']:,.0f} | {ratio:.2f}× | "
              f"{r['cpu_us']:.2f} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['errors_total']} |")
PY
