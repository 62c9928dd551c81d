#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient against examples/autobahn_server and
# fails unless every case passes (check-report.py says what passing means).
#
# Usage:  autobahn/run-server.sh [PORT]     (or AUTOBAHN_PORT; default 9001)
# Report: autobahn/reports/server/index.html (index.json is what is checked)
# Bounds: AUTOBAHN_TIMEOUT seconds for the whole wstest run (default 1200)
set -euo pipefail

cd "$(dirname "$0")/.." # the spec's outdir is relative to the repo root
port="${1:-${AUTOBAHN_PORT:-9001}}"
limit="${AUTOBAHN_TIMEOUT:-1200}"
# These two mirror autobahn/fuzzingclient.json ("outdir" and the agent).
outdir=autobahn/reports/server
agent=emitws
spec=autobahn/reports/fuzzingclient.json
log=autobahn/reports/server-wstest.log

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

autobahn/install-wstest.sh
cargo build --release --example autobahn_server

# Otherwise the readiness wait below would be satisfied by somebody else.
if port_open; then
  echo "port $port is already in use; pass another: autobahn/run-server.sh PORT" >&2
  exit 1
fi

# A stale report must never pass for this run's.
rm -rf "$outdir"
mkdir -p "$outdir"
# The checked-in spec names port 9001: run from a copy that names ours.
python3 - "$port" "$spec" <<'EOF'
import json, sys
spec = json.load(open("autobahn/fuzzingclient.json"))
spec["servers"][0]["url"] = "ws://127.0.0.1:%s" % sys.argv[1]
json.dump(spec, open(sys.argv[2], "w"), indent=2)
EOF

server_pid=
wstest_pid=
stop_all() { # bounded: a server that ignores SIGTERM gets SIGKILL after ~5 s
  [ -z "$wstest_pid" ] || kill "$wstest_pid" 2>/dev/null || true
  [ -n "$server_pid" ] || return 0
  kill "$server_pid" 2>/dev/null || return 0
  for _ in $(seq 50); do
    kill -0 "$server_pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$server_pid" 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM # exit through the EXIT trap, so the server goes too
target/release/examples/autobahn_server "127.0.0.1:$port" &
server_pid=$!

for _ in $(seq 100); do # up to ~10 s
  port_open && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "autobahn_server exited before listening on port $port" >&2
    exit 1
  fi
  sleep 0.1
done
if ! port_open; then
  echo "autobahn_server is not accepting connections on port $port" >&2
  exit 1
fi

# wstest prints a line per case: keep that in the log, not on the console.
echo "running wstest fuzzingclient against 127.0.0.1:$port (log: $log)"
# In the background because bash runs a signal's trap only once the foreground
# command ends; `wait` returns at once, so Ctrl-C stops everything promptly.
timeout --kill-after=10 "$limit" autobahn/wstest -m fuzzingclient -s "$spec" >"$log" 2>&1 &
wstest_pid=$!
rc=0
wait "$wstest_pid" || rc=$?
wstest_pid=
if [ "$rc" -ne 0 ]; then
  tail -n 20 "$log" >&2
  if [ "$rc" -eq 124 ]; then
    echo "wstest did not finish within ${limit}s" >&2
  else
    echo "wstest failed (exit $rc)" >&2
  fi
  exit 1
fi
if ! kill -0 "$server_pid" 2>/dev/null; then
  echo "warning: autobahn_server died during the run (cases after that fail)" >&2
fi

# wstest writes whatever cases it got through, so hold the report to the count
# it announced at the start.
expect="$(sed -n 's/^Ok, will run \([0-9]*\) test cases.*/\1/p' "$log" | head -n 1)"
if [ -z "$expect" ]; then
  echo "wstest did not say how many cases it would run; see $log" >&2
  exit 1
fi
python3 autobahn/check-report.py "$outdir/index.json" "$agent" --label server --expect "$expect"
