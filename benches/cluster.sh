#!/usr/bin/env bash
# Cross-node fan-out over Redis: one sender broadcasts to a room whose members
# are on one node or spread over two (emitws-cluster-node, one worker each,
# sharing a redis-server); examples/cluster_fanout counts every delivery and
# the CPU each process used. Three set-ups, taking turns within each round:
#   local   one node, no Redis: all RECEIVERS on it (the baseline)
#   1node   one node with the Redis adapter: the same, plus a publish per broadcast
#   2nodes  two nodes: RECEIVERS/2 on each, the sender on the first
#   remote  two nodes: all RECEIVERS on the second, the sender alone on the first,
#           so node A's CPU is the publishing side and node B's the receiving
#           side of every cross-node message
#   remote-cluster  the same over a Redis Cluster of 3 masters and 3 replicas
#           (redis+cluster://): the room's channel is sharded, SPUBLISHed on
#           its master; the redis column sums all six processes
#
# Usage: benches/cluster.sh    (ROUNDS=3 DURATION=10 RECEIVERS=200 PAYLOAD=64 WINDOW=16)
# Needs: redis-server and redis-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
receivers="${RECEIVERS:-200}"
payload="${PAYLOAD:-64}"
window="${WINDOW:-16}"
out=target/bench-cluster
mkdir -p "$out"
rm -f "$out"/*.json

ONLY_HELPERS=1 source benches/common.sh
cargo build -q --release --features redis --example cluster_fanout
cargo build -q --release -p emitws-tools --features redis --bin emitws-cluster-node
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

redis_port=9700
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$out/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
wait_port "$redis_port"
redis_url="redis://127.0.0.1:$redis_port/"

# A Redis Cluster: 3 masters, 3 replicas (as tests/common/redis_cluster.rs).
cluster_pids=()
cluster_addrs=()
for cport in 9801 9802 9803 9804 9805 9806; do
  rm -f "$out/nodes-$cport.conf"
  redis-server --port "$cport" --bind 127.0.0.1 --save "" --appendonly no --dir "$out" \
    --cluster-enabled yes --cluster-config-file "nodes-$cport.conf" --cluster-node-timeout 1000 \
    >"$out/redis-$cport.log" 2>&1 &
  cluster_pids+=("$!")
  pids+=("$!")
  cluster_addrs+=("127.0.0.1:$cport")
done
for cport in 9801 9802 9803 9804 9805 9806; do wait_port "$cport"; done
redis-cli --cluster create "${cluster_addrs[@]}" --cluster-replicas 1 --cluster-yes >"$out/cluster-create.log"
until redis-cli -p 9801 cluster info | grep -q 'cluster_state:ok'; do sleep 0.2; done
cluster_url="redis+cluster://127.0.0.1:9801,127.0.0.1:9802/"
cluster_pid_args=()
for p in "${cluster_pids[@]}"; do cluster_pid_args+=(--pid "$p"); done

port=9710
# start_node [REDIS_URL]: a node on the next port; sets node_pid and node_addr.
start_node() {
  port=$((port + 1))
  target/release/emitws-cluster-node --workers 1 --rate 0 --addr "127.0.0.1:$port" ${1:+--redis "$1"} \
    </dev/null >/dev/null 2>>"$out/nodes.log" &
  node_pid=$!
  node_addr="127.0.0.1:$port"
  pids+=("$node_pid")
  wait_port "$port"
}
stop_nodes() {
  for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
fanout() {
  target/release/examples/cluster_fanout --payload "$payload" --window "$window" \
    --warmup 2 --duration "$duration" "$@"
}

for round in $(seq "$rounds"); do
  echo "round $round: local" >&2
  start_node
  fanout --sender "$node_addr" --node "$node_addr" --per-node "$receivers" --pid "$node_pid" \
    >"$out/local-$round.json"
  stop_nodes "$node_pid"

  echo "round $round: 1node" >&2
  start_node "$redis_url"
  fanout --sender "$node_addr" --node "$node_addr" --per-node "$receivers" --pid "$node_pid" --pid "$redis_pid" \
    >"$out/1node-$round.json"
  stop_nodes "$node_pid"

  echo "round $round: 2nodes" >&2
  start_node "$redis_url"
  a_pid=$node_pid a_addr=$node_addr
  start_node "$redis_url"
  fanout --sender "$a_addr" --node "$a_addr" --node "$node_addr" --per-node $((receivers / 2)) \
    --pid "$a_pid" --pid "$node_pid" --pid "$redis_pid" >"$out/2nodes-$round.json"
  stop_nodes "$a_pid" "$node_pid"

  echo "round $round: remote" >&2
  start_node "$redis_url"
  a_pid=$node_pid a_addr=$node_addr
  start_node "$redis_url"
  fanout --sender "$a_addr" --node "$node_addr" --per-node "$receivers" \
    --pid "$a_pid" --pid "$node_pid" --pid "$redis_pid" >"$out/remote-$round.json"
  stop_nodes "$a_pid" "$node_pid"

  echo "round $round: remote-cluster" >&2
  start_node "$cluster_url"
  a_pid=$node_pid a_addr=$node_addr
  start_node "$cluster_url"
  fanout --sender "$a_addr" --node "$node_addr" --per-node "$receivers" \
    --pid "$a_pid" --pid "$node_pid" "${cluster_pid_args[@]}" >"$out/remote-cluster-$round.json"
  stop_nodes "$a_pid" "$node_pid"
done

python3 - "$out" <<'PY'
import glob, json, sys
out = sys.argv[1]
runs = {}
for setup in ("local", "1node", "2nodes", "remote", "remote-cluster"):
    found = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/{setup}-*.json"))]
    runs[setup] = sorted(found, key=lambda r: r["deliveries_per_sec"])[len(found) // 2]
base = runs["local"]["deliveries_per_sec"]
print("| set-up | receivers | broadcasts/s | deliveries/s (median) | vs local "
      "| CPU µs per broadcast: node A | node B | redis |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for setup, run in runs.items():
    cpu = list(run["cpu_seconds"].values())
    # The --pid order: node A, then node B (two nodes), then redis (all but
    # local; the six servers of the cluster for remote-cluster, summed).
    nodes = 1 if setup in ("local", "1node") else 2
    a, b = cpu[0], (cpu[1] if nodes == 2 else None)
    redis = sum(cpu[nodes:]) if setup != "local" else None
    cell = lambda c: "–" if c is None else f"{c / run['broadcasts'] * 1e6:.1f}"
    print(f"| {setup} | {run['receivers']} | {run['broadcasts_per_sec']:.0f} | {run['deliveries_per_sec']:.0f} "
          f"| {run['deliveries_per_sec'] / base:.2f}× | {cell(a)} | {cell(b)} | {cell(redis)} |")
PY
