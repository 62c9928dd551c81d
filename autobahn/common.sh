# Sourced by autobahn/run-server.sh and autobahn/run-client.sh: the pieces
# both need to start a peer, wait for it, bound a run and stop everything.
# Callers set $pids (processes to stop on exit) as they start them.

pids=()

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# refuse_busy_port PORT SCRIPT: otherwise the readiness wait would be
# satisfied by somebody else's server.
refuse_busy_port() {
  if port_open "$1"; then
    echo "port $1 is already in use; pass another: $2 PORT" >&2
    exit 1
  fi
}

# stop_all: SIGTERM to every started process; SIGKILL to any still there ~5 s later.
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 1 ] || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap stop_all EXIT
trap 'exit 130' INT TERM # exit through the EXIT trap, so everything started goes too

# wait_listening PID PORT NAME: up to ~10 s for process PID to listen on PORT.
wait_listening() {
  for _ in $(seq 100); do
    port_open "$2" && return 0
    if ! kill -0 "$1" 2>/dev/null; then
      echo "$3 exited before listening on port $2" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "$3 is not accepting connections on port $2" >&2
  exit 1
}

# write_spec SOURCE DEST URL: a copy of a checked-in wstest spec (which names
# port 9001) with its URL replaced; fuzzingclient specs hold it per server.
write_spec() {
  python3 - "$@" <<'PY'
import json, sys
source, dest, url = sys.argv[1:]
spec = json.load(open(source))
if "servers" in spec:
    spec["servers"][0]["url"] = url
else:
    spec["url"] = url
json.dump(spec, open(dest, "w"), indent=2)
PY
}

# run_bounded LIMIT LOG NAME COMMAND...: runs COMMAND with its output in LOG,
# killed after LIMIT seconds; fails with the log's tail if it does not exit 0.
# In the background because bash runs a signal's trap only once the foreground
# command ends; `wait` returns at once, so Ctrl-C stops everything promptly.
run_bounded() {
  local limit=$1 log=$2 name=$3
  shift 3
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  local rc=0
  wait "$pid" || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$log" >&2
    if [ "$rc" -eq 124 ]; then
      echo "$name did not finish within ${limit}s" >&2
    else
      echo "$name failed (exit $rc)" >&2
    fi
    exit 1
  fi
}
