#!/usr/bin/env bash
# Runs examples/autobahn_client against the Autobahn|Testsuite fuzzingserver
# and fails unless every case passes (check-report.py says what passing means).
#
# Usage:  autobahn/run-client.sh [PORT]     (or AUTOBAHN_CLIENT_PORT; default 9002)
# Report: autobahn/reports/client/index.html (index.json is what is checked)
# Bounds: AUTOBAHN_TIMEOUT seconds for the whole client run (default 2400)
set -euo pipefail

cd "$(dirname "$0")/.." # the spec's outdir is relative to the repo root
source autobahn/common.sh
port="${1:-${AUTOBAHN_CLIENT_PORT:-9002}}"
limit="${AUTOBAHN_TIMEOUT:-2400}"
# These two mirror autobahn/fuzzingserver.json ("outdir") and the example's agent.
outdir=autobahn/reports/client
agent=emitws
spec=autobahn/reports/fuzzingserver.json
wstest_log=autobahn/reports/client-wstest.log
log=autobahn/reports/client-run.log

autobahn/install-wstest.sh
cargo build --release --example autobahn_client
refuse_busy_port "$port" autobahn/run-client.sh

# A stale report must never pass for this run's.
rm -rf "$outdir"
mkdir -p "$outdir"
write_spec autobahn/fuzzingserver.json "$spec" "ws://127.0.0.1:$port"

autobahn/wstest -m fuzzingserver -s "$spec" >"$wstest_log" 2>&1 &
wstest_pid=$!
pids+=("$wstest_pid")
wait_listening "$wstest_pid" "$port" "wstest fuzzingserver"

echo "running autobahn_client against the fuzzingserver on 127.0.0.1:$port (log: $log)"
run_bounded "$limit" "$log" autobahn_client target/release/examples/autobahn_client "ws://127.0.0.1:$port"

# The client prints the count the server announced; a report missing cases fails.
expect="$(sed -n 's/^cases: \([0-9]*\)$/\1/p' "$log" | head -n 1)"
if [ -z "$expect" ]; then
  echo "autobahn_client did not report the case count; see $log" >&2
  exit 1
fi
python3 autobahn/check-report.py "$outdir/index.json" "$agent" --label client --expect "$expect"
