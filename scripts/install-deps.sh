#!/usr/bin/env bash
# Installs what the whole test suite needs on a Debian machine, or fails and
# names what is missing. Idempotent: a second run only checks.
#
#   rust components  clippy, rustfmt (rustup)
#   Debian packages  redis-server (cluster tests), chromium + chromium-driver
#                    (the chat demo in a browser), ca-certificates,
#                    debian-archive-keyring, gpgv (the wstest installer's apt)
#   commands         node + npm (the JavaScript client, the browser test),
#                    python3 with venv and pip (the conformance suite)
#   wstest           the Autobahn suite, in a private prefix (autobahn/install-wstest.sh)
#
# EMITWS_SKIP (space or comma separated: redis browser js protocol autobahn)
# leaves out a part of the suite on purpose; what it leaves out is not needed
# here either. EMITWS_NO_INSTALL=1 only checks, installing nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

EMITWS_SKIP="${EMITWS_SKIP:-}"
skipped() { [[ " ${EMITWS_SKIP//,/ } " == *" $1 "* ]]; }
missing=()

if command -v rustup >/dev/null && [ -z "${EMITWS_NO_INSTALL:-}" ]; then
  rustup component add clippy rustfmt >/dev/null 2>&1 || true
fi
cargo fmt --version >/dev/null 2>&1 || missing+=("rustfmt (rustup component add rustfmt)")
cargo clippy --version >/dev/null 2>&1 || missing+=("clippy (rustup component add clippy)")

packages=()
skipped redis || packages+=(redis-server)
skipped browser || packages+=(chromium chromium-driver)
skipped autobahn || packages+=(ca-certificates debian-archive-keyring gpgv)
need=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ] && [ -z "${EMITWS_NO_INSTALL:-}" ] && command -v apt-get >/dev/null; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
  echo "installing Debian packages: ${need[*]}"
  if "${sudo[@]}" apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; then
    need=()
  fi
fi
for pkg in "${need[@]}"; do missing+=("Debian package $pkg (apt-get install $pkg)"); done

if ! skipped js || ! skipped browser; then
  command -v node >/dev/null || missing+=("node (Node.js 20 or later)")
  command -v npm >/dev/null || missing+=("npm")
fi
# Debian's own python3 makes a venv only with python3-venv.
has_venv() { python3 -c 'import venv, ensurepip' >/dev/null 2>&1; }
if ! skipped protocol && ! has_venv; then
  if [ -z "${EMITWS_NO_INSTALL:-}" ] && command -v apt-get >/dev/null; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo -n)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv || true
  fi
  has_venv || missing+=("python3 with venv and ensurepip (apt-get install python3-venv)")
fi

if [ "${#missing[@]}" -eq 0 ] && ! skipped autobahn; then
  if [ -n "${EMITWS_NO_INSTALL:-}" ]; then
    autobahn/wstest -a >/dev/null 2>&1 || missing+=("wstest (autobahn/install-wstest.sh)")
  else
    autobahn/install-wstest.sh || missing+=("wstest: autobahn/install-wstest.sh failed")
  fi
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "The test suite cannot run; missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  echo "Install them, or leave parts out on purpose with EMITWS_SKIP (redis browser js protocol autobahn)." >&2
  exit 1
fi
echo "everything the tests need is here${EMITWS_SKIP:+ (left out on purpose: $EMITWS_SKIP)}"
