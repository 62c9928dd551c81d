#!/usr/bin/env bash
# User-space instructions per operation under callgrind, repeatable on a
# shared machine where timings are not: the number to compare before and
# after a change on the hot path.
#
# Two-duration difference method: each server runs under callgrind twice,
# loaded for SHORT and LONG seconds; instructions per operation are
# (Ir_long - Ir_short) / (ops_long - ops_short), so start-up, handshakes and
# shutdown cancel out. Operations are the load tool's `messages`: echo round
# trips, or fan-out deliveries.
#
# Cases: raw echo ping-pong and 8 in flight (examples/echo), event-layer
# request/reply with 8 in flight and room fan-out (examples/app_echo:
# 1,000 members, 10 publishers, 32 B). One worker each. With HISTORY=1, the
# same room fan-out once more with the room's history on (`--history 1000`:
# every delivery carries its offset, PROTOCOL.md §13). With UWS_ECHO and
# UWS_FANOUT set to their binaries, the same raw ping-pong and fan-out cases
# for uWebSockets servers built as described in docs/BENCHMARKS.md, "Fan-out
# against uWebSockets" (not in this repository; they take HOST:PORT); with
# ECHO_FLOOR=benches/peers/target/release/echo-floor, raw ping-pong for the
# floor of echo (benches/peers/README.md). With ASYNC=1, request/reply with 8
# in flight answered by a sync and by an async handler (examples/async_echo,
# feature `tokio`: what a future on the runtime and its deferred reply cost).
# With SOCKETIO=benches/peers/target/release/echo-socketioxide, the same
# request/reply for socketioxide (Socket.IO's `echo` event acknowledged,
# benches/peers/README.md), the peer of both; and a 16 KiB binary
# request/reply, 10 connections, one in flight each: emitws.v2 against a
# Socket.IO binary attachment acknowledged with the same bytes.
#
# Usage: benches/callgrind.sh   (SHORT=3 LONG=8; HISTORY=1; CASES="fanout fanout-history"
#        runs only the cases named; LOAD=emitws-load to use,
#        BIN=directory of the example servers, to compare two builds with the
#        same load tool; UWS_ECHO=/tmp/uws/echo UWS_FANOUT=/tmp/uws/fanout
#        ECHO_FLOOR=benches/peers/target/release/echo-floor
#        SOCKETIO=benches/peers/target/release/echo-socketioxide)
# Needs: valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "callgrind.sh needs valgrind (apt-get install valgrind)" >&2; exit 1; }
short="${SHORT:-3}"
long="${LONG:-8}"
if [ -z "${LOAD:-}" ] || [ -z "${BIN:-}" ]; then
  cargo build -q --release --example echo --example app_echo
  [ -z "${ASYNC:-}" ] || cargo build -q --release --features tokio --example async_echo
  cargo build -q --release -p emitws-tools --bin emitws-load
fi
load="${LOAD:-target/release/emitws-load}"
bin="${BIN:-target/release/examples}"
out=target/bench-callgrind
mkdir -p "$out"
port=9900
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

# measure NAME SERVER... -- LOAD_ARGS...
# The server command gets the address 127.0.0.1:PORT as its last argument.
measure() {
  local name=$1
  shift
  [ -z "${CASES:-}" ] || [[ " $CASES " == *" $name "* ]] || return 0
  local server=()
  while [ "$1" != -- ]; do server+=("$1"); shift; done
  shift
  for duration in "$short" "$long"; do
    port=$((port + 1))
    valgrind --tool=callgrind --callgrind-out-file="$out/$name-$duration.cg" \
      "${server[@]}" "127.0.0.1:$port" >/dev/null 2>"$out/$name-$duration.log" &
    pid=$!
    for _ in $(seq 400); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    "$load" "$@" --url "ws://127.0.0.1:$port${url_path:-/}" --duration "$duration" --warmup 0 --json \
      >"$out/$name-$duration.json" 2>/dev/null || true
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
  done
  python3 - "$out" "$name" "$short" "$long" <<'PY'
import json, sys
out, name, short, long = sys.argv[1:]
def instructions(d):
    for line in open(f"{out}/{name}-{d}.cg"):
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    sys.exit(f"{name}: no instruction total in {out}/{name}-{d}.cg")
def ops(d):
    return json.load(open(f"{out}/{name}-{d}.json"))["messages"]
a, b, x, y = instructions(short), instructions(long), ops(short), ops(long)
if y <= x:
    sys.exit(f"{name}: the long run did no more operations than the short one ({x}, {y})")
print(f"{name:16} {(b - a) / (y - x):8.0f} instructions/op   (Ir {a} / {b}; ops {x} / {y})")
PY
}

pingpong=(echo --connections 100 --payload 20 --in-flight 1)
fanout=(fanout --connections 1000 --publishers 10 --payload 32)
measure echo-pingpong "$bin/echo" --workers 1 --addr -- "${pingpong[@]}"
measure echo-pipelined "$bin/echo" --workers 1 --addr -- echo --connections 100 --payload 20 --in-flight 8
measure app-pipelined "$bin/app_echo" --workers 1 --addr -- echo --connections 100 --payload 20 --in-flight 8 --protocol emitws
measure fanout "$bin/app_echo" --workers 1 --addr -- "${fanout[@]}" --protocol emitws
[ -z "${HISTORY:-}" ] || measure fanout-history "$bin/app_echo" --workers 1 --history 1000 --addr -- "${fanout[@]}" --protocol emitws
if [ -n "${ASYNC:-}" ]; then
  pipelined=(echo --connections 100 --payload 20 --in-flight 8 --protocol emitws --any-order)
  measure async-sync "$bin/async_echo" --mode sync --workers 1 --addr -- "${pipelined[@]}"
  measure async-async "$bin/async_echo" --mode async --async-threads 1 --workers 1 --addr -- "${pipelined[@]}"
fi
if [ -n "${SOCKETIO:-}" ]; then
  measure v2-16k "$bin/app_echo" --workers 1 --addr -- echo --connections 10 --payload 16384 --protocol emitws-v2
  url_path="/socket.io/?EIO=4&transport=websocket"
  measure socketio-pipelined "$SOCKETIO" -- echo --connections 100 --payload 20 --in-flight 8 --protocol socketio --any-order
  measure socketio-binary-16k "$SOCKETIO" -- echo --connections 10 --payload 16384 --protocol socketio-binary --any-order
  url_path=
fi
[ -z "${ECHO_FLOOR:-}" ] || measure floor-pingpong "$ECHO_FLOOR" -- "${pingpong[@]}"
[ -z "${UWS_ECHO:-}" ] || measure uws-pingpong "$UWS_ECHO" -- "${pingpong[@]}"
[ -z "${UWS_FANOUT:-}" ] || measure uws-fanout "$UWS_FANOUT" -- "${fanout[@]}"
