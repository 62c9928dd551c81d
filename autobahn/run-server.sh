#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzingclient against examples/autobahn_server and
# fails unless every case passes (check-report.py says what passing means).
#
# Usage:  autobahn/run-server.sh [PORT]     (or AUTOBAHN_PORT; default 9001)
# Report: autobahn/reports/server/index.html (index.json is what is checked)
# Bounds: AUTOBAHN_TIMEOUT seconds for the whole wstest run (default 2400)
set -euo pipefail

cd "$(dirname "$0")/.." # the spec's outdir is relative to the repo root
source autobahn/common.sh
port="${1:-${AUTOBAHN_PORT:-9001}}"
limit="${AUTOBAHN_TIMEOUT:-2400}"
# These two mirror autobahn/fuzzingclient.json ("outdir" and the agent).
outdir=autobahn/reports/server
agent=emitws
spec=autobahn/reports/fuzzingclient.json
log=autobahn/reports/server-wstest.log

autobahn/install-wstest.sh
cargo build --release --example autobahn_server
refuse_busy_port "$port" autobahn/run-server.sh

# A stale report must never pass for this run's.
rm -rf "$outdir"
mkdir -p "$outdir"
write_spec autobahn/fuzzingclient.json "$spec" "ws://127.0.0.1:$port"

target/release/examples/autobahn_server "127.0.0.1:$port" &
server_pid=$!
pids+=("$server_pid")
wait_listening "$server_pid" "$port" autobahn_server

# wstest prints a line per case: keep that in the log, not on the console.
echo "running wstest fuzzingclient against 127.0.0.1:$port (log: $log)"
run_bounded "$limit" "$log" wstest autobahn/wstest -m fuzzingclient -s "$spec"
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
