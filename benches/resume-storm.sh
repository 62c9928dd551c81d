#!/usr/bin/env bash
# Mass reconnect (issue 16 §4): CONNECTIONS clients, spread over ROOMS history
# rooms, are all cut at once and all resume (PROTOCOL.md §13), measured by
# `emitws-load resume-storm` against emitws-cluster-node (one worker):
#   single   one node, no Redis: the clients are dropped (SO_LINGER 0, so the
#            node sees 1006 and keeps their sessions) and resume on it
#   cluster  two nodes sharing a redis-server: the clients are on node A,
#            which is SIGKILLed; they resume on node B (sessions and room
#            history from Redis: needs the cluster resume of issue 16 §3)
# Each round starts fresh servers. Before the cut every room gets BEFORE
# broadcasts, while the clients are away MISSED more; every client must come
# back resumed with exactly the MISSED broadcasts of its room, or the run
# fails. Reported per run: time from the first reconnect to the last resume
# reply, per-client resume time, the resuming node's memory (VmRSS before the
# resume, VmHWM at the end) and CPU time during the resume, and, in a
# cluster, Redis commands per client;
# and, for comparison, the time the same clients took to connect and join
# their rooms in the first place (as many in flight).
#
# Usage: benches/resume-storm.sh [single|cluster|both]
#        (CONNECTIONS=10000 ROOMS=10 BEFORE=5 MISSED=10 ROUNDS=1 MAX_CONNECTING=1000 TTL_MS=2000)
# MAX_CONNECTING bounds the reconnects in flight (the node's listen backlog
# is 1024: more at once would only wait for SYN retries). The cluster's
# nodes notice a dead node after TTL_MS; the clients wait twice that before
# reconnecting, so the time measured is the resume's, not the wait for it.
# Needs: redis-server for `cluster`; ulimit -n above CONNECTIONS (the script raises its soft limit).
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-single}"
connections="${CONNECTIONS:-10000}"
rooms="${ROOMS:-10}"
before="${BEFORE:-5}"
missed="${MISSED:-10}"
rounds="${ROUNDS:-1}"
max_connecting="${MAX_CONNECTING:-1000}"
ttl_ms="${TTL_MS:-2000}"
case "$which" in single | cluster | both) ;; *) echo "usage: $0 [single|cluster|both]" >&2; exit 2 ;; esac
out=target/bench-resume-storm
mkdir -p "$out"
rm -f "$out"/*.json

ONLY_HELPERS=1 source benches/common.sh
cargo build -q --release -p emitws-tools --features redis --bin emitws-load --bin emitws-cluster-node
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

port=9760
# start_node [REDIS_URL]: a node on the next port, on core 0; sets node_pid and node_url.
start_node() {
  port=$((port + 1))
  taskset -c 0 target/release/emitws-cluster-node --workers 1 --rate 0 --addr "127.0.0.1:$port" \
    --history '#storm-*' --history-size 1000 --ttl-ms "$ttl_ms" ${1:+--redis "$1"} \
    </dev/null >/dev/null 2>>"$out/nodes.log" &
  node_pid=$!
  node_url="ws://127.0.0.1:$port/"
  pids+=("$node_pid")
  wait_port "$port"
}
stop() {
  for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
# storm RESULT LOAD_ARGS...: the load tool on core 1; a failed run (status 1:
# a client not resumed whole, or errors) is kept and reported, a fatal one stops.
storm() {
  local result=$1 status=0
  shift
  taskset -c 1 target/release/emitws-load resume-storm -c "$connections" --rooms "$rooms" --before "$before" \
    --missed "$missed" --max-connecting "$max_connecting" --connect-timeout 30 --json "$@" >"$result" || status=$?
  [ "$status" -le 1 ] || { echo "emitws-load failed ($status)" >&2; exit 1; }
  [ "$status" -eq 0 ] || echo "$result: not every client resumed whole (see its JSON)" >&2
}

for round in $(seq "$rounds"); do
  if [ "$which" != cluster ]; then
    echo "round $round: single" >&2
    start_node
    storm "$out/single-$round.json" --url "$node_url" --server-pid "$node_pid"
    stop "$node_pid"
  fi
  if [ "$which" != single ]; then
    echo "round $round: cluster" >&2
    redis_port=9750
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$out/redis.log" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_port "$redis_port"
    redis_url="redis://127.0.0.1:$redis_port/"
    start_node "$redis_url"
    a_pid=$node_pid a_url=$node_url
    start_node "$redis_url"
    storm "$out/cluster-$round.json" --url "$a_url" --resume-url "$node_url" --kill "$a_pid" \
      --away "$((ttl_ms * 2))ms" --server-pid "$node_pid" --redis "$redis_url"
    stop "$a_pid" "$node_pid" "$redis_pid"
  fi
done

python3 - "$out" <<'PY'
import glob, json, sys
out = sys.argv[1]
print("| set-up | clients | first connect + join | resumed whole | replayed / missed | time to all resumed "
      "| per client p50 / p99 / max | resuming node RSS before → peak | its CPU during the resume | Redis commands per client |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for setup in ("single", "cluster"):
    for f in sorted(glob.glob(f"{out}/{setup}-*.json")):
        r = json.load(open(f))
        mib = lambda kib: "?" if kib is None else f"{kib / 1024:.1f} MiB"
        redis = "–" if r["redis_commands_per_client"] is None else f"{r['redis_commands_per_client']:.2f}"
        print(f"| {setup} | {r['sessions']} | {r['connect_s'] * 1000:.0f} ms | {r['resumed']} | {r['replayed']} / {r['expected_replayed']} "
              f"| {r['resume_s'] * 1000:.0f} ms | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} ms "
              f"| {mib(r['server_rss_before_kib'])} → {mib(r['server_hwm_kib'])} | {r['server_cpu_ms']} ms | {redis} |")
PY
