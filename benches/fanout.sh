#!/usr/bin/env bash
# Room fan-out, one run: emitws's event layer (examples/app_echo: `/pub`
# broadcasts to the room, sender included) against a tokio-tungstenite server
# written the usual way (benches/peers fanout-tungstenite: a task per
# connection and a tokio broadcast channel). One room of CONNECTIONS members
# (each joins `#room` first on emitws; on the peer every connection is in it),
# PUBLISHERS of them publish PAYLOAD-byte messages, each waiting for its own
# copy before sending the next. The peer runs twice: with tungstenite's
# defaults, and with a 4 KiB read buffer (tokio-tungstenite-4k; see the note in
# fanout-tungstenite.rs). Each server is pinned to core 0 (one worker /
# a current_thread runtime), the load tool (one thread) to core 1. Fan-out on
# two cores is noisy, so the servers alternate for ROUNDS rounds and the table
# shows medians (and every round, for the spread).
#
# With UWS_FANOUT set to its binary, uWebSockets runs too: a server of a few
# lines built as described in docs/BENCHMARKS.md, "Fan-out against
# uWebSockets" (not in this repository), taking [HOST:]PORT as its argument,
# whose every connection subscribes to one topic and whose message handler
# calls `App::publish` (all members, the sender included: what the
# tungstenite peer does). The peers get the load tool's raw messages, emitws
# the same messages in its envelope.
#
# Usage: benches/fanout.sh   (ROUNDS=5 DURATION=10 CONNECTIONS=1000 PUBLISHERS=10 PAYLOAD=32;
#        UWS_FANOUT=/tmp/uws/fanout; SERVERS picks the servers, emitws first:
#        default "emitws tokio-tungstenite tokio-tungstenite-4k", and uWebSockets
#        if UWS_FANOUT is set; also emitws-io-uring, with `--io-uring on`, and
#        emitws-2-workers, two workers on both cores, shared with the load tool)
# Needs: taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-5}"
duration="${DURATION:-10}"
connections="${CONNECTIONS:-1000}"
publishers="${PUBLISHERS:-10}"
payload="${PAYLOAD:-32}"
out=target/bench-fanout
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.cpu "$out"/*.load
ulimit -n "$(( connections + 1024 ))" 2>/dev/null || true

source benches/common.sh
port=9750
default_servers="emitws tokio-tungstenite tokio-tungstenite-4k${UWS_FANOUT:+ uWebSockets}"
read -r -a servers <<<"${SERVERS:-$default_servers}"
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

for round in $(seq "$rounds"); do
  for server in "${servers[@]}"; do
    port=$((port + 1))
    server_cores=0
    load=(fanout --url "ws://127.0.0.1:$port/" --connections "$connections" --publishers "$publishers" --payload "$payload")
    case "$server" in
      emitws)
        command=(target/release/examples/app_echo --workers 1 --addr "127.0.0.1:$port")
        load+=(--protocol emitws) ;;
      emitws-io-uring)
        command=(target/release/examples/app_echo --workers 1 --io-uring on --addr "127.0.0.1:$port")
        load+=(--protocol emitws) ;;
      emitws-2-workers)
        # Both cores, shared with the load tool: members spread over two workers.
        command=(target/release/examples/app_echo --workers 2 --addr "127.0.0.1:$port")
        server_cores=0,1
        load+=(--protocol emitws) ;;
      tokio-tungstenite) command=(benches/peers/target/release/fanout-tungstenite "127.0.0.1:$port") ;;
      tokio-tungstenite-4k) command=(benches/peers/target/release/fanout-tungstenite "127.0.0.1:$port" 4096) ;;
      uWebSockets) command=("${UWS_FANOUT:?UWS_FANOUT: the uWebSockets fan-out server}" "127.0.0.1:$port") ;;
      *) echo "unknown server $server" >&2; exit 2 ;;
    esac
    echo "round $round: $server" >&2
    pinned_load "$out/$server-$round" "$port" "${command[@]}" -- "${load[@]}"
  done
done

python3 - "$out" "$rounds" "$ticks_per_sec" "$duration" "${servers[@]}" <<'PY'
import json, statistics, sys
out, rounds, hz, duration = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
servers = sys.argv[5:]
WARMUP = 2
runs = {s: [] for s in servers}
for s in servers:
    for r in range(1, rounds + 1):
        run = json.load(open(f"{out}/{s}-{r}.json"))
        ticks = int(open(f"{out}/{s}-{r}.cpu").read())
        # CPU over the whole run (connect and drain included) per delivery of
        # warm-up and measurement: the server's, and the load tool's.
        deliveries = max(1.0, run["msgs_per_sec"] * (duration + WARMUP))
        run["cpu_us"] = ticks / hz * 1e6 / deliveries
        try:
            run["load_cpu_us"] = sum(map(float, open(f"{out}/{s}-{r}.load").read().split())) * 1e6 / deliveries
        except (OSError, ValueError):
            run["load_cpu_us"] = float("nan")
        runs[s].append(run)
print("Every round:\n")
print("| round | server | deliveries/s | p50 µs | p99 µs | published | delivered / expected | errors |")
print("|---:|---|---:|---:|---:|---:|---:|---:|")
for r in range(rounds):
    for s in servers:
        x = runs[s][r]
        print(f"| {r + 1} | {s} | {x['msgs_per_sec']:,.0f} | {x['p50_us']:,.0f} | {x['p99_us']:,.0f} | "
              f"{x['published']:,} | {x['delivered']:,} / {x['expected']:,} | {x['errors']} |")
med = lambda s, k: statistics.median(x[k] for x in runs[s])
print("\nMedians:\n")
print(f"| server | deliveries/s | {servers[0]} vs it | p50 µs | p99 µs | server CPU µs/delivery | load tool CPU µs/delivery | complete |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
ours = med(servers[0], "msgs_per_sec")
for s in servers:
    missing = sum(x["missing"] for x in runs[s])
    expected = sum(x["expected"] for x in runs[s])
    complete = "yes, every round" if missing == 0 else f"{missing:,} of {expected:,} missing"
    ratio = "" if s == servers[0] else f"{ours / med(s, 'msgs_per_sec'):.2f}×"
    print(f"| {s} | {med(s, 'msgs_per_sec'):,.0f} | {ratio} | {med(s, 'p50_us'):,.0f} | "
          f"{med(s, 'p99_us'):,.0f} | {med(s, 'cpu_us'):.2f} | {med(s, 'load_cpu_us'):.2f} | {complete} |")
PY
