#!/usr/bin/env bash
# The project's whole test suite, the same one CI runs: it first installs what
# the tests need (scripts/install-deps.sh) or fails naming what is missing,
# then runs formatting, lints, unit/integration/doc tests, the Redis cluster
# tests, the JavaScript client's tests, the emitws.v1 conformance suite
# (tests/protocol: a Python client written from PROTOCOL.md), the chat demo
# in a browser, then Autobahn conformance of our server and of our client.
# Stops at the first failure.
#
# A part can be left out only on purpose: EMITWS_SKIP="io-uring redis browser js
# protocol autobahn ipv6" (any of them, space or comma separated; ipv6: the
# IPv6 loopback test, for machines without one). The tests of a
# part that is not left out fail when they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
export EMITWS_SKIP="${EMITWS_SKIP:-}"

section() { printf '\n==== %s ====\n' "$*"; }
skipped() { [[ " ${EMITWS_SKIP//,/ } " == *" $1 "* ]]; }
left_out=()
skip() {
  left_out+=("$1")
  printf '\n*** left out on purpose (EMITWS_SKIP): %s ***\n' "$1"
}

section "prerequisites: scripts/install-deps.sh"
scripts/install-deps.sh

if skipped ipv6; then skip "the IPv6 loopback test (tests/client.rs ipv6_loopback)"; fi

section "format: cargo fmt --all --check"
cargo fmt --all --check

section "lint: cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# The engine (proto, runtime, client) builds without the event layer, and then
# has no JSON dependency; tests and examples of the event layer are left out.
section "engine alone: cargo build --no-default-features --all-targets, no JSON crate in cargo tree"
cargo build --no-default-features --all-targets
json_crates=$(cargo tree --no-default-features -e normal -p emitws --prefix none | grep -E '^(serde|serde_json|itoa) ' || true)
if [ -n "$json_crates" ]; then
  printf 'the engine without default features depends on:\n%s\n' "$json_crates"
  exit 1
fi

# Some tests run the example programs as their users do; --all-targets builds
# examples as test harnesses only, so their binaries are built first.
section "tests: cargo build --workspace --examples && cargo test --workspace --all-targets"
cargo build --workspace --examples
cargo test --workspace --all-targets

# --all-targets leaves out doctests, so they get their own run.
section "doctests: cargo test --doc"
cargo test --doc

# Async handlers are behind a feature (tokio): their tests, unit tests and
# rustdoc examples (README.md's included) run with it on.
section "async handlers: cargo test --features tokio --test app_async; --lib async_handler; --doc async_handler ReadmeDoctests"
cargo test --features tokio --test app_async
cargo test --features tokio --lib async_handler
cargo test --features tokio --doc -- async_handler ReadmeDoctests

# Batched sends through io_uring are behind a feature (Linux); its tests run
# servers with it on. A kernel that refuses io_uring fails them, by name.
if skipped io-uring; then skip "the io_uring send tests"; else
  section "io_uring sends: cargo test --features io-uring --test uring"
  cargo test --features io-uring --test uring
fi

# Mounting on axum is behind a feature: its test serves an axum router and an
# app on one port; the module's doctests compile with it only.
section "axum mount: cargo test --features axum --test axum_mount, and the doctests of emitws::axum"
cargo test --features axum --test axum_mount
cargo test --features axum --doc axum

# MessagePack payloads are behind a feature (msgpack): their test over real
# sockets, the unit tests, and the rustdoc examples (README.md's included).
section "MessagePack payloads: cargo test --features msgpack --test app_msgpack; --lib msgpack; --doc msgpack ReadmeDoctests"
cargo test --features msgpack --test app_msgpack
cargo test --features msgpack --lib msgpack
cargo test --features msgpack --doc -- msgpack ReadmeDoctests

# The Redis adapter is behind a feature; its tests start their own redis-server.
# cluster_nodes runs emitws-cluster-node processes: it lives with them in tools/.
if skipped redis; then skip "the Redis cluster tests"; else
  # The library's own tests of the Redis parts, and every test file with parts behind the feature (grep -l 'feature = "redis"' tests/*.rs).
  section "cluster: cargo test --features redis --lib --test cluster --test cluster_failures --test cluster_history --test cluster_resume --test cluster_resume_history --test cluster_tls --test cluster_sentinel --test cluster_socket_ops --test cluster_users --test cluster_generated_ids --test redis_cluster_harness --test cluster_redis_cluster --test chat_cluster --test drain --test health --test logs --test metrics --test app_binary --test app_binary_history --test app_seeds_openspeed; -p emitws-tools --test cluster_nodes --test resume_storm"
  cargo test --features redis --lib --test cluster --test cluster_failures --test cluster_history --test cluster_resume --test cluster_resume_history --test cluster_tls --test cluster_sentinel --test cluster_socket_ops --test cluster_users --test cluster_generated_ids --test redis_cluster_harness --test cluster_redis_cluster --test chat_cluster --test drain --test health --test logs --test metrics --test app_binary --test app_binary_history --test app_seeds_openspeed
  cargo test -p emitws-tools --features redis --test cluster_nodes --test resume_storm
fi

if skipped js; then skip "the JavaScript client's unit tests"; else
  # The other files there need servers: tests/js_client.rs and tests/examples_data.rs start them.
  section "JavaScript client: node --test clients/js/test/protocol.test.js"
  node --experimental-websocket --test clients/js/test/protocol.test.js
fi

if skipped protocol; then skip "the emitws.v1 conformance suite"; else
  section "conformance: tests/protocol/run.sh (a Python client written from PROTOCOL.md)"
  tests/protocol/run.sh
fi


# The chat demo in headless Chromium (Debian's package).
if skipped browser; then skip "the browser test"; else
  section "browser: the chat demo in headless Chromium (tests/browser)"
  cargo build --release --example chat
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  CHAT_BIN="$PWD/target/release/examples/chat" node --test tests/browser/
fi

if skipped autobahn; then skip "Autobahn"; else
  section "conformance: autobahn/run-server.sh"
  autobahn/run-server.sh
  section "conformance: autobahn/run-client.sh"
  autobahn/run-client.sh
fi

section "all passed"
if [ "${#left_out[@]}" -gt 0 ]; then
  printf 'NOT RUN (EMITWS_SKIP): %s\n' "${left_out[@]}"
fi
