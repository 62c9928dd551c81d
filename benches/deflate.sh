#!/usr/bin/env bash
# permessage-deflate costs, one run: server memory per compressed connection
# (default and low-memory settings, against no compression), and echo
# throughput with compression against without.
#
# Usage: benches/deflate.sh     (COUNT=1000 ROUNDS=3 DURATION=10 PAYLOAD=1k by default)
#
# Memory: N connections each echo one PAYLOAD message of JSON text (so the
# zlib state a connection creates on first use exists), then stay open; the
# server's RSS delta over N is the cost of a connection that has talked.
# Throughput: 100 connections x PAYLOAD of JSON text, one message in flight,
# server pinned to core 0 and the load tool (which compresses and inflates
# too) to core 1; configurations take turns within each round; medians.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${COUNT:-1000}"
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
payload="${PAYLOAD:-1k}"
out=target/bench-deflate
mkdir -p "$out"
rm -f "$out"/*.json

source benches/common.sh
port=9700
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

configs=(off default low-memory)
server_args() { [ "$1" = off ] || echo "--deflate $1"; }
load_args() { [ "$1" = off ] || echo "--deflate"; }

echo "### Memory per connection after one ${payload} echo ($count connections)"
echo
echo "| compression | RSS before (KiB) | RSS after (KiB) | bytes per connection |"
echo "|---|---:|---:|---:|"
for config in "${configs[@]}"; do
  port=$((port + 1))
  # shellcheck disable=SC2046
  target/release/examples/echo --workers 1 --addr "127.0.0.1:$port" $(server_args "$config") >/dev/null &
  server_pid=$!
  pids+=("$server_pid")
  wait_port "$port"
  idle=(target/release/emitws-load idle --url "ws://127.0.0.1:$port/")
  [ "$config" = off ] || idle+=(--deflate --payload "$payload" --text --pattern json)
  # One connection first, so the worker's pools and buffers are in "before".
  "${idle[@]}" --connections 1 --hold 1 >/dev/null
  before=$(rss_kib "$server_pid")
  log="$out/idle-$config.log"
  "${idle[@]}" --connections "$count" --hold 600 >"$log" 2>&1 &
  load_pid=$!
  pids+=("$load_pid")
  for _ in $(seq 1200); do grep -q '^ready' "$log" && break; sleep 0.1; done
  grep -q '^ready' "$log" || { echo "$config: idle load never got ready" >&2; cat "$log" >&2; exit 1; }
  sleep 1 # let the server settle
  after=$(rss_kib "$server_pid")
  echo "| $config | $before | $after | $(( (after - before) * 1024 / count )) |"
  kill "$load_pid" "$server_pid" 2>/dev/null || true
  wait "$load_pid" "$server_pid" 2>/dev/null || true
done

echo
echo "### Echo, 100 connections x ${payload} JSON text, 1 in flight (median of $rounds)"
echo
for round in $(seq "$rounds"); do
  for config in "${configs[@]}"; do
    port=$((port + 1))
    # shellcheck disable=SC2046
    taskset -c 0 target/release/examples/echo --workers 1 --addr "127.0.0.1:$port" $(server_args "$config") >/dev/null &
    pid=$!
    pids+=("$pid")
    wait_port "$port"
    echo "round $round: $config" >&2
    # shellcheck disable=SC2046
    taskset -c 1 target/release/emitws-load echo --url "ws://127.0.0.1:$port/" --connections 100 --payload "$payload" \
      --text --pattern json $(load_args "$config") --duration "$duration" --warmup 2 --json >"$out/echo-$config-$round.json"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
done

python3 - "$out" "${configs[@]}" <<'PY'
import glob, json, sys
out, configs = sys.argv[1], sys.argv[2:]
print("| compression | msgs/s | vs off | p50 µs | p99 µs | errors |")
print("|---|---:|---:|---:|---:|---:|")
medians = {}
for config in configs:
    runs = sorted((json.load(open(f)) for f in glob.glob(f"{out}/echo-{config}-*.json")), key=lambda r: r["msgs_per_sec"])
    medians[config] = runs[len(runs) // 2]
base = medians["off"]["msgs_per_sec"]
for config in configs:
    r = medians[config]
    print(f"| {config} | {r['msgs_per_sec']:,.0f} | {r['msgs_per_sec'] / base:.2f}× | {r['p50_us']} | {r['p99_us']} | {r['errors']} |")
PY
