# Sourced by the benchmark scripts: builds everything they run and names the
# servers. Each server runs one event loop so they compare loop for loop.
# A script that runs none of them sets ONLY_HELPERS=1 to take just the helpers.
if [ -z "${ONLY_HELPERS:-}" ]; then
  # With io_uring built in (Linux), off unless a server is run with `--io-uring on`.
  if [ "$(uname -s)" = Linux ]; then uring=(--features io-uring); else uring=(); fi
  cargo build -q --release "${uring[@]}" --example echo --example app_echo
  cargo build -q --release -p emitws-tools --bin emitws-load
  cargo build -q --release --manifest-path benches/peers/Cargo.toml
fi

declare -A server_cmd=(
  [emitws]="target/release/examples/echo --workers 1 --addr"
  [fastwebsockets]="benches/peers/target/release/echo-fastwebsockets"
  [tokio-tungstenite]="benches/peers/target/release/echo-tungstenite"
)
servers=(emitws fastwebsockets tokio-tungstenite)
# Run by benches/compare.sh only, not in `servers`: the floor of echo (see
# benches/peers/README.md) and, when UWS_ECHO names its binary, a uWebSockets
# echo server built per docs/BENCHMARKS.md (it takes HOST:PORT like the others).
server_cmd[echo-floor]="benches/peers/target/release/echo-floor"
[ -z "${UWS_ECHO:-}" ] || server_cmd[uWebSockets]="$UWS_ECHO"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT: up to 5 s for a server to listen.
wait_port() {
  for _ in $(seq 100); do
    port_open "$1" && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_sec=$(getconf CLK_TCK)

# pinned_load RESULT PORT SERVER_COMMAND... -- MODE LOAD_ARGS...
# Starts the server pinned to core 0 (it must listen on PORT), runs
# `emitws-load MODE LOAD_ARGS` (echo or fanout) pinned to core 1 for $duration
# seconds after a 2 s warm-up, and writes RESULT.json (the load tool's JSON,
# which counts errors and missing deliveries), RESULT.cpu (the server's CPU
# ticks over the run) and, if /usr/bin/time exists, RESULT.load (the load
# tool's user and system CPU seconds). The server's pid is in $pid while it
# runs, for an EXIT trap. A fatal load tool failure (exit status 2) stops the
# script.
pinned_load() {
  local result=$1 port=$2
  shift 2
  local server=()
  while [ "$1" != -- ]; do server+=("$1"); shift; done
  shift
  # The server on core 0 (or on the cores in server_cores, for one that runs
  # several workers), the load tool on core 1.
  taskset -c "${server_cores:-0}" "${server[@]}" >/dev/null &
  pid=$!
  wait_port "$port"
  local before
  before=$(cpu_ticks "$pid")
  local status=0 timer=()
  [ ! -x /usr/bin/time ] || timer=(/usr/bin/time -f "%U %S" -o "$result.load")
  taskset -c 1 "${timer[@]}" target/release/emitws-load "$@" --duration "$duration" --warmup 2 --json \
    >"$result.json" || status=$?
  echo $(( $(cpu_ticks "$pid") - before )) >"$result.cpu"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=
  [ "$status" -le 1 ]
}

stop_pinned_server() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; }

# bench_setup NAME DEFAULT_SCENARIOS: a pinned_load benchmark's settings,
# each with its default: $rounds (ROUNDS, 3), $duration (DURATION seconds,
# 10) and $scenarios (SCENARIOS, CONNECTIONS:PAYLOAD:IN_FLIGHT triples); its
# results folder $out, target/bench-NAME, emptied of an earlier run's; and
# an EXIT trap that stops the server pinned_load runs, if one is running.
bench_setup() {
  rounds="${ROUNDS:-3}"
  duration="${DURATION:-10}"
  scenarios="${SCENARIOS:-$2}"
  out=target/bench-$1
  mkdir -p "$out"
  rm -f "$out"/*.json "$out"/*.cpu
  pid=
  trap stop_pinned_server EXIT
}

# bench_medians LABEL...: reads the runs pinned_load wrote as
# $out/LABEL-SCENARIO-ROUND.json (and .cpu), SCENARIO one of $scenarios
# with its colons as dashes, and prints, as JSON, {scenario as in
# $scenarios: {LABEL: run}}, in the order of $scenarios and the labels: the
# run of median msgs_per_sec over the rounds, with `cpu_us`, the median over
# the rounds of the server's CPU µs per message (its CPU over the whole run,
# connect and close included, divided by the messages of warm-up and
# measurement at the measured rate), and `errors_total`, the errors of
# every round.
bench_medians() {
  python3 - "$out" "$scenarios" "$ticks_per_sec" "$duration" "$@" <<'PY'
import glob, json, statistics, sys
out, scenarios, hz, duration, labels = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5:]
WARMUP = 2  # pinned_load's --warmup
medians = {}
for scenario in scenarios:
    for label in labels:
        runs = []
        for f in sorted(glob.glob(f"{out}/{label}-{scenario.replace(':', '-')}-*.json")):
            run = json.load(open(f))
            ticks = int(open(f[:-5] + ".cpu").read())
            run["cpu_us"] = ticks / hz * 1e6 / max(1.0, run["msgs_per_sec"] * (duration + WARMUP))
            runs.append(run)
        mid = sorted(runs, key=lambda r: r["msgs_per_sec"])[len(runs) // 2]
        mid["cpu_us"] = statistics.median(r["cpu_us"] for r in runs)
        mid["errors_total"] = sum(r["errors"] for r in runs)
        medians.setdefault(scenario, {})[label] = mid
json.dump(medians, sys.stdout)
PY
}
