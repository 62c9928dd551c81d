#!/usr/bin/env bash
# Soak: does the server's memory stay flat under a steady mixed load?
#
# One server (examples/app_echo: the event layer with /echo, /join and /pub;
# with --stats it prints its counts every SAMPLE seconds) gets, for MINUTES minutes:
#   IDLE idle connections (raw WebSocket, they only answer pings: keepalive rounds),
#   ECHO connections doing request/reply echo (`emitws-load echo --protocol emitws`),
#   FANOUT room members of which PUBLISHERS publish (`emitws-load fanout`),
#   CHURN connections a second that connect, join the room, and leave a second later.
# Every SAMPLE seconds it records the server's RSS, open fds, established TCP
# connections on its port and, from the server's own line, sockets, room
# members, connection slots, timer entries and pooled buffers. After the load
# stops it waits AFTER seconds and samples once more (all closed).
# It prints the samples as a markdown table and the RSS growth after WARMUP
# minutes; target/bench-soak/NAME.csv keeps them.
#
# Usage: benches/soak.sh
#   IDLE=18700 ECHO=100 FANOUT=100 MINUTES=30 benches/soak.sh     (19,000 connections)
#   SERVER="/path/to/server --workers 1 --addr" benches/soak.sh (another server: counts if it prints them)
# The fd limit (ulimit -n) must exceed the connections. NICE (default 10)
# lowers the priority of everything the soak runs; PIN=1 pins the server to
# core 0 and the load to core 1. KEEPALIVE (seconds, default 30) is the
# server's keepalive idle time.
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY_HELPERS=1 source benches/common.sh
if [ -z "${SERVER:-}" ]; then
  cargo build -q --release --example app_echo
  cargo build -q --release -p emitws-tools --bin emitws-load
fi

idle=${IDLE:-1000} echo_conns=${ECHO:-50} fanout=${FANOUT:-50} publishers=${PUBLISHERS:-2}
churn=${CHURN:-20} minutes=${MINUTES:-5} warmup=${WARMUP:-1} sample=${SAMPLE:-10}
workers=${WORKERS:-1} keepalive=${KEEPALIVE:-30} after=${AFTER:-60} port=${PORT:-9600}
name=${NAME:-soak-$(date -u +%Y%m%dT%H%M)}
server=${SERVER:-target/release/examples/app_echo --workers $workers --keepalive $keepalive --stats $sample --addr}
load=target/release/emitws-load
url="ws://127.0.0.1:$port/"
out=target/bench-soak
mkdir -p "$out"
csv="$out/$name.csv" server_log="$out/$name.server.log"
seconds=$((minutes * 60))
server_cpu=() load_cpu=()
if [ -n "${PIN:-}" ]; then server_cpu=(taskset -c 0) load_cpu=(taskset -c 1); fi
nice=(nice -n "${NICE:-10}")

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# shellcheck disable=SC2086 # the server command is meant to split
"${nice[@]}" "${server_cpu[@]}" $server "127.0.0.1:$port" >"$server_log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
wait_port "$port"

# sample SECONDS: one CSV line of the server's state.
sample() {
  local rss fds tcp counts
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status")
  fds=$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
  tcp=$(ss -Htn state established "( sport = :$port )" | wc -l)
  # The server's last counts line, as comma-separated values (empty for other servers).
  counts=$({ grep '^stats ' "$server_log" || true; } | tail -n 1 | sed -E 's/^stats secs=[0-9]+ //; s/[a-z_]+=//g; s/ /,/g')
  echo "$1,$rss,$fds,$tcp,${counts:-,,,,,,}" >>"$csv"
}
echo "seconds,rss_kib,fds,tcp,sockets,room,connections,slots,timers,timer_capacity,pooled" >"$csv"
sample 0

# The load. Each tool runs a little longer than the soak; they are stopped at its end.
idle_log="$out/$name.idle.log"
"${nice[@]}" "${load_cpu[@]}" "$load" idle --url "$url" --connections "$idle" --max-connecting 256 \
  --hold $((seconds + 600)) >"$idle_log" 2>&1 &
pids+=($!)
for _ in $(seq 1200); do grep -q '^ready' "$idle_log" && break; sleep 0.25; done
grep -q '^ready' "$idle_log" || { echo "the idle connections never got ready" >&2; cat "$idle_log" >&2; exit 1; }
if [ "$echo_conns" -gt 0 ]; then
  "${nice[@]}" "${load_cpu[@]}" "$load" echo --url "$url" --protocol emitws --connections "$echo_conns" \
    --duration $((seconds + 600)) --warmup 0 >"$out/$name.echo.log" 2>&1 &
  pids+=($!)
fi
if [ "$fanout" -gt 0 ]; then
  "${nice[@]}" "${load_cpu[@]}" "$load" fanout --url "$url" --protocol emitws --connections "$fanout" \
    --publishers "$publishers" --duration $((seconds + 600)) --warmup 0 >"$out/$name.fanout.log" 2>&1 &
  pids+=($!)
fi
if [ "$churn" -gt 0 ]; then
  (
    while :; do
      "${nice[@]}" "${load_cpu[@]}" "$load" idle --url "$url" --protocol emitws --connections "$churn" \
        --hold 1 >/dev/null 2>&1 &
      sleep 1
    done
  ) &
  pids+=($!)
fi

start=$(date +%s)
while :; do
  now=$(($(date +%s) - start))
  [ "$now" -ge "$seconds" ] && break
  sleep $((sample - now % sample))
  sample $(($(date +%s) - start))
done
# Stop the load (the churn loop first, so it starts no more), then let every
# connection close and the timers they armed run out.
for ((i = ${#pids[@]} - 1; i > 0; i--)); do kill "${pids[i]}" 2>/dev/null || true; done
sleep "$after"
sample "$(($(date +%s) - start))"

echo "soak $name: IDLE=$idle ECHO=$echo_conns FANOUT=$fanout PUBLISHERS=$publishers CHURN=$churn/s" \
  "MINUTES=$minutes KEEPALIVE=${keepalive}s; server: $server"
echo
echo "| time (m:s) | RSS (KiB) | fds | TCP | sockets | room | connections | slots | timers | timer capacity | pooled |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
tail -n +2 "$csv" | awk -F, -v last="$(($(wc -l <"$csv") - 1))" '{
  at = sprintf("%d:%02d", $1 / 60, $1 % 60)
  printf "| %s |", NR == last ? at " (load stopped)" : at
  for (i = 2; i <= NF; i++) printf " %s |", $i
  printf "\n" }'
# Growth after warm-up: the first sample at or after WARMUP minutes against
# the last sample under load, and the slope between them.
awk -F, -v warm=$((warmup * 60)) 'NR > 1 { rows[++n] = $0 } END {
  for (i = 1; i < n; i++) { split(rows[i], r, ","); if (r[1] >= warm) { split(rows[i], w, ","); break } }
  split(rows[n - 1], e, ","); split(rows[n], z, ",")
  minutes = (e[1] - w[1]) / 60
  printf "\nRSS after warm-up (minute %.1f): %d KiB; at the end of the load (minute %.1f): %d KiB; ", w[1] / 60, w[2], e[1] / 60, e[2]
  slope = minutes > 0 ? (e[2] - w[2]) / minutes : 0
  printf "growth %d KiB (%.1f KiB/min); after the load stopped: %d KiB\n", e[2] - w[2], slope, z[2]
}' "$csv"
