# Sourced by the benchmark scripts: builds everything they run and names the
# servers. Each server runs one event loop so they compare loop for loop.
cargo build -q --release --example echo --bin emitws-load
cargo build -q --release --manifest-path benches/peers/Cargo.toml

declare -A server_cmd=(
  [emitws]="target/release/examples/echo --workers 1 --addr"
  [fastwebsockets]="benches/peers/target/release/echo-fastwebsockets"
  [tokio-tungstenite]="benches/peers/target/release/echo-tungstenite"
)
servers=(emitws fastwebsockets tokio-tungstenite)

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
