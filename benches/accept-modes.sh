#!/usr/bin/env bash
# SO_REUSEPORT listeners against one acceptor thread, with 2 workers: how fast
# 10,000 connections open (handshake included), and echo throughput with
# 100 connections x 20 B. Alternates the modes for ROUNDS rounds.
#
# Usage: benches/accept-modes.sh     (ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
source benches/common.sh
port=9600
pid=
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null || true' EXIT
echo "| round | mode | 10k connections opened in (s) | echo 100 x 20 B msgs/s |"
echo "|---|---|---:|---:|"
for round in $(seq "$rounds"); do
  for mode in reuseport acceptor; do
    port=$((port + 1))
    target/release/examples/echo --workers 2 --accept "$mode" --addr "127.0.0.1:$port" >/dev/null &
    pid=$!
    wait_port "$port"
    connect=$(target/release/emitws-load idle --url "ws://127.0.0.1:$port/" --connections 10000 --hold 0.5 \
      --max-connecting 512 --json | tail -n 1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["connect_s"])')
    rate=$(target/release/emitws-load echo --url "ws://127.0.0.1:$port/" --connections 100 --payload 20 \
      --duration 5 --warmup 1 --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["msgs_per_sec"]))')
    echo "| $round | $mode | $connect | $rate |"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
