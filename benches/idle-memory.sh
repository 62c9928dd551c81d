#!/usr/bin/env bash
# Server memory per idle connection: RSS after N idle connections are open,
# minus RSS before, divided by N. Each server runs one event loop.
#
# Usage: benches/idle-memory.sh            (COUNTS="1000 10000" by default)
# SERVERS picks the servers (all by default): emitws (the engine, examples/echo),
# emitws-app (the event layer, examples/app_echo; sockets idle after the
# handshake), emitws-app-joined (the same, each socket having joined the room
# `#room` with a `/join` request and got its reply), fastwebsockets,
# tokio-tungstenite; and, only when named, socketioxide (benches/peers'
# echo-socketioxide: Socket.IO sockets connected to the main namespace).
# 19,000 is the most one process can hold here (20,000 open files per process).
set -euo pipefail
cd "$(dirname "$0")/.."
counts="${COUNTS:-1000 10000}"
out=target/bench-idle
mkdir -p "$out"

source benches/common.sh
server_cmd[emitws-app]="target/release/examples/app_echo --workers 1 --addr"
server_cmd[emitws-app-joined]="${server_cmd[emitws-app]}"
server_cmd[socketioxide]="benches/peers/target/release/echo-socketioxide"
declare -A load_args=([emitws-app-joined]="--protocol emitws" [socketioxide]="--protocol socketio")
declare -A url_path=([socketioxide]="/socket.io/?EIO=4&transport=websocket")
read -r -a servers <<<"${SERVERS:-emitws emitws-app emitws-app-joined ${servers[*]:1}}"
port=9500
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

echo "| server | connections | RSS before (KiB) | RSS after (KiB) | bytes per connection |"
echo "|---|---:|---:|---:|---:|"
for n in $counts; do
  for server in "${servers[@]}"; do
    port=$((port + 1))
    # shellcheck disable=SC2086
    ${server_cmd[$server]} "127.0.0.1:$port" >/dev/null &
    server_pid=$!
    pids+=("$server_pid")
    wait_port "$port"
    # One connection first, so lazily built state (buffers, pools, the room) is in "before".
    # shellcheck disable=SC2086 # the arguments are meant to split
    target/release/emitws-load idle --url "ws://127.0.0.1:$port${url_path[$server]:-/}" ${load_args[$server]:-} --connections 1 --hold 1 >/dev/null
    before=$(rss_kib "$server_pid")
    log="$out/$server-$n.log"
    : >"$log"
    # shellcheck disable=SC2086
    target/release/emitws-load idle --url "ws://127.0.0.1:$port${url_path[$server]:-/}" ${load_args[$server]:-} --connections "$n" --hold 600 \
      >"$log" 2>&1 &
    load_pid=$!
    pids+=("$load_pid")
    for _ in $(seq 1200); do grep -q '^ready' "$log" && break; sleep 0.1; done
    grep -q '^ready' "$log" || { echo "$server: idle load never got ready" >&2; cat "$log" >&2; exit 1; }
    sleep 1 # let the server settle
    after=$(rss_kib "$server_pid")
    echo "| $server | $n | $before | $after | $(( (after - before) * 1024 / n )) |"
    kill "$load_pid" "$server_pid" 2>/dev/null || true
    wait "$load_pid" "$server_pid" 2>/dev/null || true
  done
done
