#!/usr/bin/env bash
# emitws.v1 conformance: builds examples/protocol_server.rs, starts it under
# each setting the suite needs (one 127.0.0.1 port each), runs suite.py (a
# Python client written from PROTOCOL.md alone) against them, stops them.
# Exits non-zero if a check fails or anything cannot run.
#   tests/protocol/run.sh [-k WORD]   (arguments go to suite.py)
#   PROTOCOL_SERVER=path/to/protocol_server tests/protocol/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/protocol
venv=target/protocol-venv
mkdir -p target
work=$(mktemp -d target/protocol-run.XXXXXX)
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

die() { echo "tests/protocol: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is missing (apt-get install python3)"
python3 -c 'import venv, ensurepip' 2>/dev/null || die "python3's venv/ensurepip is missing (apt-get install python3-venv)"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv $venv failed (Debian: apt-get install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" \
    || die "pip install -r $here/requirements.txt failed (PyPI must be reachable)"
  cp "$here/requirements.txt" "$venv/requirements.txt"
fi

# PROTOCOL_SERVER=path runs the suite against an already built server.
server=${PROTOCOL_SERVER:-}
if [ -z "$server" ]; then
  cargo build --quiet --example protocol_server || die "cargo build --example protocol_server failed"
  server=target/debug/examples/protocol_server
fi

# name and flags of each server the suite talks to
configs=(
  "main|--rate none"
  "close|--policy close --rate 1/5"
  "rate|--rate 1/5"
  "message|--auth message --auth-timeout-ms 1000 --max-devices 1/reject-new"
  "challenge|--auth challenge --auth-timeout-ms 1000"
  "upgrade|--auth upgrade --max-devices 1/drop-oldest"
  "heartbeat|--heartbeat-ms 200"
  "nosession|--resume-window-ms 0"
  "short|--resume-window-ms 300"
  "buffer|--resume-buffer 2"
)
args=()
for config in "${configs[@]}"; do
  name=${config%%|*}
  # shellcheck disable=SC2086 # the flags are words
  "$server" --addr 127.0.0.1:0 ${config#*|} >"$work/$name.out" 2>"$work/$name.err" &
  pids+=("$!")
  addr=
  for _ in $(seq 100); do
    addr=$(sed -n 's/^listening //p' "$work/$name.out")
    [ -n "$addr" ] && break
    kill -0 "$!" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/$name.err" >&2; die "the $name server did not start"; }
  args+=(--server "$name=$addr")
done

# no __pycache__ in the tree
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" "$here/suite.py" "${args[@]}" "$@"
