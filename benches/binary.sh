#!/usr/bin/env bash
# 16 KiB request/reply as emitws.v2 binary envelopes against the same bytes
# base64'd in emitws.v1 JSON (and, with
# SOCKETIO=benches/peers/target/release/echo-socketioxide, as a Socket.IO
# binary attachment to socketioxide): examples/app_echo's `/echo` answers a
# binary request with `reply_binary` (the bytes borrowed from the frame) and
# a JSON one with its data as written, never decoding the base64, so v1 is
# the cheapest v1 can be. One worker pinned to core 0, the load tool on core
# 1 checking every reply byte for byte; the servers take turns within each
# round; the table shows medians of ROUNDS.
#
# Usage: benches/binary.sh      (ROUNDS=3 DURATION=10 SCENARIOS="10:16384:1")
# SCENARIOS lists CONNECTIONS:PAYLOAD:IN_FLIGHT (PAYLOAD: the bytes; v1
# sends their base64, 4/3 as many characters). Needs: taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY_HELPERS=1 source benches/common.sh
cargo build -q --release --example app_echo
cargo build -q --release -p emitws-tools --bin emitws-load
bench_setup binary "10:16384:1"
[ -z "${SOCKETIO:-}" ] || cargo build -q --release --manifest-path benches/peers/Cargo.toml --bin echo-socketioxide
port=9790
kinds=(v2 v1)
[ -z "${SOCKETIO:-}" ] || kinds+=(socketio)

for round in $(seq "$rounds"); do
  for scenario in $scenarios; do
    IFS=: read -r conns payload in_flight <<<"$scenario"
    for kind in "${kinds[@]}"; do
      port=$((port + 1))
      load=(echo --connections "$conns" --in-flight "$in_flight")
      server=(target/release/examples/app_echo --workers 1 --addr "127.0.0.1:$port")
      case $kind in
        v2) load+=(--url "ws://127.0.0.1:$port/" --protocol emitws-v2 --payload "$payload") ;;
        v1) load+=(--url "ws://127.0.0.1:$port/" --protocol emitws --payload $(( (payload + 2) / 3 * 4 ))) ;;
        socketio)
          server=("$SOCKETIO" "127.0.0.1:$port")
          # Each event is a task of its own there: acknowledgements may pass each other.
          load+=(--url "ws://127.0.0.1:$port/socket.io/?EIO=4&transport=websocket" --protocol socketio-binary --payload "$payload" --any-order)
          ;;
      esac
      echo "round $round: $kind, $conns x $payload B, $in_flight in flight" >&2
      pinned_load "$out/$kind-$conns-$payload-$in_flight-$round" "$port" "${server[@]}" -- "${load[@]}"
    done
  done
done

bench_medians "${kinds[@]}" >"$out/medians.json"
python3 - "$out/medians.json" <<'PY'
import json, sys
medians = json.load(open(sys.argv[1]))
print("| connections × payload, in flight | server and encoding | round trips/s (median) | vs v2 | server CPU µs/round trip | p50 µs | p99 µs | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
names = (
    ("v2", "emitws.v2 binary envelopes"),
    ("v1", "emitws.v1, the bytes base64'd"),
    ("socketio", "socketioxide, a binary attachment"),
)
for scenario, runs in medians.items():
    conns, payload, in_flight = scenario.split(":")
    for kind, name in ((kind, name) for kind, name in names if kind in runs):
        r = runs[kind]
        ratio = r["msgs_per_sec"] / runs["v2"]["msgs_per_sec"]
        print(f"| {conns} × {payload} B, {in_flight} | {name} | {r['msgs_per_sec']:,.0f} | {ratio:.2f}× | "
              f"{r['cpu_us']:.2f} | {r['p50_us']:,.0f} | {r['p99_us']:,.0f} | {r['errors_total']} |")
PY
