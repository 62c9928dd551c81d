#!/usr/bin/env bash
# Request/reply through the event layer against raw echo, one run: the same
# engine serves raw WebSocket echo (examples/echo) and emitws.v1 requests
# answered by an `/echo` handler (examples/app_echo), one worker each, pinned
# to core 0; the load tool on core 1 sends raw messages to the one and
# `[1,id,"/echo",data]` to the other (checking every `[2,id,data]`). The two
# take turns within each round; the table shows medians of ROUNDS. With
# AXUM=1, the same app mounted on axum (examples/axum_mount, feature `axum`:
# its tokio runtime pinned with it) takes a turn too.
#
# Usage: benches/app-echo.sh      (ROUNDS=3 DURATION=10 SCENARIOS="100:20:1 100:20:8")
# SCENARIOS lists CONNECTIONS:PAYLOAD:IN_FLIGHT. Needs: taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
bench_setup app-echo "100:20:1 100:20:8"
port=9700
layers=(raw app)
if [ -n "${AXUM:-}" ]; then
  cargo build -q --release --features axum --example axum_mount
  layers+=(axum)
fi

for round in $(seq "$rounds"); do
  for scenario in $scenarios; do
    IFS=: read -r conns payload in_flight <<<"$scenario"
    for layer in "${layers[@]}"; do
      port=$((port + 1))
      load=(echo --url "ws://127.0.0.1:$port/" --connections "$conns" --payload "$payload" --in-flight "$in_flight")
      if [ "$layer" = raw ]; then
        server=(target/release/examples/echo --workers 1 --addr "127.0.0.1:$port")
        load+=(--text)
      else
        [ "$layer" = app ] && example=app_echo || example=axum_mount
        server=(target/release/examples/$example --workers 1 --addr "127.0.0.1:$port")
        load+=(--protocol emitws)
      fi
      echo "round $round: $layer, $conns x $payload B, $in_flight in flight" >&2
      pinned_load "$out/$layer-$conns-$payload-$in_flight-$round" "$port" "${server[@]}" -- "${load[@]}"
    done
  done
done

bench_medians "${layers[@]}" >"$out/medians.json"
python3 - "$out/medians.json" <<'PY'
import json, sys
medians = json.load(open(sys.argv[1]))
print("| connections × payload, in flight | server | round trips/s (median) | vs raw | server CPU µs/round trip | p50 µs | p99 µs | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for scenario, runs in medians.items():
    conns, payload, in_flight = scenario.split(":")
    names = (
        ("raw", "raw echo (examples/echo)"),
        ("app", "event layer `/echo` (examples/app_echo)"),
        ("axum", "the same, mounted on axum (examples/axum_mount)"),
    )
    for layer, name in ((layer, name) for layer, name in names if layer in runs):
        r = runs[layer]
        ratio = r["msgs_per_sec"] / runs["raw"]["msgs_per_sec"]
        print(f"| {conns} × {payload} B, {in_flight} | {name} | {r['msgs_per_sec']:,.0f} | {ratio:.2f}× | "
              f"{r['cpu_us']:.2f} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['errors_total']} |")
PY
