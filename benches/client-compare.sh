#!/usr/bin/env bash
# Client-side echo benchmark: emitws's client against tokio-tungstenite's, in
# one run, against the same server (emitws's echo example, one event loop
# pinned to core 0). Each client runs pinned to core 1:
#   emitws-runtime     all connections on one server worker (ServerHandle::connect)
#   emitws-blocking    one thread per connection (emitws::client::Client), 1-connection scenarios only
#   tokio-tungstenite  all connections as tasks on one current-thread runtime
# Every connection sends a binary message, waits for its echo and sends the
# next (strict ping-pong). Clients take turns within each round; the table
# shows medians of ROUNDS.
#
# Usage: benches/client-compare.sh        (ROUNDS=3 DURATION=10 by default)
# SCENARIOS lists CONNECTIONS:PAYLOAD pairs. Needs taskset (util-linux).
# Prints a markdown table for docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
scenarios="${SCENARIOS:-1:20 100:20 100:16384}"
out=target/bench-client
mkdir -p "$out"
rm -f "$out"/*.json

source benches/common.sh
cargo build -q --release --example client_echo
port="${PORT:-9500}"

pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 0 target/release/examples/echo --workers 1 --addr "127.0.0.1:$port" >/dev/null &
pid=$!
wait_port "$port"
url="ws://127.0.0.1:$port/"

for round in $(seq "$rounds"); do
  for scenario in $scenarios; do
    IFS=: read -r conns payload <<<"$scenario"
    clients=(emitws-runtime tokio-tungstenite)
    [ "$conns" -gt 1 ] || clients+=(emitws-blocking)
    for client in "${clients[@]}"; do
      echo "round $round: $client, $conns connections x $payload B" >&2
      result="$out/$client-$conns-$payload-$round.json"
      case "$client" in
        emitws-runtime | emitws-blocking)
          taskset -c 1 target/release/examples/client_echo --url "$url" --mode "${client#emitws-}" \
            --connections "$conns" --payload "$payload" --duration "$duration" --warmup 2 >"$result"
          ;;
        tokio-tungstenite)
          taskset -c 1 benches/peers/target/release/client-tungstenite "$url" "$conns" "$payload" "$duration" 2 >"$result"
          ;;
      esac
    done
  done
done

python3 - "$out" "$scenarios" <<'PY'
import glob, json, sys
out, scenarios = sys.argv[1], sys.argv[2].split()
print("| connections × payload | client | msgs/s (median) | emitws-runtime vs it |")
print("|---|---|---:|---:|")
for scenario in scenarios:
    conns, payload = scenario.split(":")
    medians = {}
    for client in ("emitws-runtime", "emitws-blocking", "tokio-tungstenite"):
        rates = sorted(json.load(open(f))["msgs_per_sec"] for f in glob.glob(f"{out}/{client}-{conns}-{payload}-*.json"))
        if rates:
            medians[client] = rates[len(rates) // 2]
    base = medians["emitws-runtime"]
    for client, rate in medians.items():
        ratio = "" if client == "emitws-runtime" else f"{base / rate:.2f}×" if rate else "∞"
        print(f"| {conns} × {payload} B | {client} | {rate:,.0f} | {ratio} |")
PY
