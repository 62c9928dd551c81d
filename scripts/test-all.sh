#!/usr/bin/env bash
# The project's whole test suite, the same one CI runs: formatting, lints,
# unit/integration/doc tests, the JavaScript client's tests, then Autobahn
# conformance of our server.
# Stops at the first failing step.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n==== %s ====\n' "$*"; }

section "format: cargo fmt --all --check"
cargo fmt --all --check

section "lint: cargo clippy --all-targets --all-features -- -D warnings"
cargo clippy --all-targets --all-features -- -D warnings

section "tests: cargo test --all-targets"
cargo test --all-targets

# --all-targets leaves out doctests, so they get their own run.
section "doctests: cargo test --doc"
cargo test --doc

# The Redis adapter is behind a feature; its tests start their own redis-server.
section "cluster: cargo test --features redis --test cluster"
cargo test --features redis --test cluster

# server.test.js runs against target/debug/examples/protocol_server, built by the cargo test step above.
section "JavaScript client: node --test clients/js/test/"
node --experimental-websocket --test clients/js/test/

section "conformance: autobahn/run-server.sh"
autobahn/run-server.sh
