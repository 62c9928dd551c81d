#!/usr/bin/env bash
# The project's whole test suite, the same one CI runs: formatting, lints,
# unit/integration/doc tests, the JavaScript client's tests, the chat demo in
# a browser, then Autobahn conformance of our server and of our client.
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
section "cluster: cargo test --features redis --test cluster --test cluster_nodes --test chat_cluster"
cargo test --features redis --test cluster --test cluster_nodes --test chat_cluster

section "JavaScript client: node --test clients/js/test/"
node --experimental-websocket --test clients/js/test/

# The chat demo in headless Chromium (Debian's package; .ci/run installs it).
section "browser: the chat demo in headless Chromium (tests/browser)"
if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  cargo build --release --example chat
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  CHAT_BIN="$PWD/target/release/examples/chat" node --test tests/browser/
elif [ -n "${EMITWS_REQUIRE_BROWSER:-}" ]; then
  echo "chromium is missing (apt-get install chromium)" >&2
  exit 1
else
  printf '\n*** chromium is not installed: SKIPPING the browser test (apt-get install chromium) ***\n\n'
fi

section "conformance: autobahn/run-server.sh"
autobahn/run-server.sh

section "conformance: autobahn/run-client.sh"
autobahn/run-client.sh
