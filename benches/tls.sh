#!/usr/bin/env bash
# wss:// against ws:// on the same server: echo throughput and server CPU per
# message, one run. The server (examples/echo, one worker) is pinned to core
# 0, the load tool to core 1; ws and wss take turns within each round.
#
# Usage: benches/tls.sh      (ROUNDS=3 DURATION=10 SCENARIOS="100:20 100:16384")
# Needs: taskset, openssl (for a throwaway self-signed certificate).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${ROUNDS:-3}"
duration="${DURATION:-10}"
scenarios="${SCENARIOS:-100:20 100:16384}"
out=target/bench-tls
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.cpu

source benches/common.sh
# An end-entity certificate for localhost (webpki refuses a CA certificate as a server's).
printf '[req]\ndistinguished_name=dn\nx509_extensions=ext\n[dn]\n[ext]\nbasicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost\n' \
  >"$out/openssl.cnf"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
  -config "$out/openssl.cnf" -keyout "$out/key.pem" -out "$out/cert.pem" 2>/dev/null
port=9600
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; }
trap cleanup EXIT

for round in $(seq "$rounds"); do
  for scenario in $scenarios; do
    IFS=: read -r conns payload <<<"$scenario"
    for scheme in ws wss; do
      port=$((port + 1))
      server=(target/release/examples/echo --workers 1 --addr "127.0.0.1:$port")
      load=(--url "$scheme://localhost:$port/" --connections "$conns" --payload "$payload")
      if [ "$scheme" = wss ]; then
        server+=(--tls-cert "$out/cert.pem" --tls-key "$out/key.pem")
        load+=(--ca "$out/cert.pem")
      fi
      echo "round $round: $scheme, $conns x $payload B" >&2
      pinned_load "$out/$scheme-$conns-$payload-$round" "$port" "${server[@]}" -- echo "${load[@]}"
    done
  done
done

python3 - "$out" "$scenarios" "$ticks_per_sec" "$duration" <<'PY'
import glob, json, statistics, sys
out, scenarios, hz, duration = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), float(sys.argv[4])
print("| connections × payload | scheme | msgs/s (median) | vs ws | server CPU µs/msg | p50 µs | p99 µs | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for scenario in scenarios:
    conns, payload = scenario.split(":")
    rows = {}
    for scheme in ("ws", "wss"):
        runs = []
        for f in sorted(glob.glob(f"{out}/{scheme}-{conns}-{payload}-*.json")):
            run = json.load(open(f))
            ticks = int(open(f[:-5] + ".cpu").read())
            run["cpu_us"] = ticks / hz * 1e6 / (run["msgs_per_sec"] * (duration + 2))
            runs.append(run)
        best = sorted(runs, key=lambda r: r["msgs_per_sec"])[len(runs) // 2]
        best["cpu_us"] = statistics.median(r["cpu_us"] for r in runs)
        rows[scheme] = best
    for scheme, r in rows.items():
        ratio = r["msgs_per_sec"] / rows["ws"]["msgs_per_sec"]
        print(f"| {conns} × {payload} B | {scheme} | {r['msgs_per_sec']:,.0f} | {ratio:.2f}× | {r['cpu_us']:.2f} | "
              f"{r['p50_us']} | {r['p99_us']} | {r['errors']} |")
PY
