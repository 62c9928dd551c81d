#!/usr/bin/env bash
# Installs the Autobahn|Testsuite (`wstest`, the reference RFC 6455 conformance
# suite) into a private prefix; run it afterwards through autobahn/wstest.
#
# wstest runs only on Python 2.7, which Debian 12 no longer ships. So we fetch
# Debian 11's python2.7 packages and unpack them with `dpkg -x`: nothing goes
# through the system's dpkg database or apt sources, and removing the prefix
# undoes everything. The suite itself comes from PyPI into that prefix.
#
# Usage:  autobahn/install-wstest.sh      (idempotent; the first run takes ~1 min)
# Prefix: $WSTEST_HOME, default $HOME/.cache/emitws/wstest
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
prefix="${WSTEST_HOME:-$HOME/.cache/emitws/wstest}"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)" # pip bakes this path into script shebangs
export WSTEST_HOME="$prefix"

if "$here/wstest" -a >/dev/null 2>&1; then
  echo "wstest already installed in $prefix"
  exit 0
fi
echo "installing wstest into $prefix"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/wheels"

# A private apt configuration that knows only bullseye: the system's sources,
# lists, pins and package cache are neither read nor changed. Sandbox::User=root
# because apt's unprivileged _apt user could not write into our mktemp dir.
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main" \
  >"$work/sources.list"
apt=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o Dir::Etc::Preferences=/dev/null -o Dir::Etc::PreferencesParts=/dev/null
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
  -o APT::Sandbox::User=root)
apt-get "${apt[@]}" -qq update
(cd "$work/debs" && apt-get "${apt[@]}" -qq download \
  python2.7 python2.7-minimal libpython2.7 libpython2.7-minimal libpython2.7-stdlib \
  python2.7-dev libpython2.7-dev libssl1.1 libffi7)
for deb in "$work"/debs/*.deb; do
  dpkg -x "$deb" "$prefix"
done

py="$prefix/usr/bin/python2.7"
arch="$(uname -m)-linux-gnu" # Debian multiarch name, e.g. x86_64-linux-gnu
export LD_LIBRARY_PATH="$prefix/usr/lib/$arch${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUSERBASE="$prefix/user"
unset PYTHONHOME PYTHONPATH
"$py" -c 'import ssl, zlib, ctypes' # fail here, clearly, if a library is missing

# The unpacked Python has no pip. pip 20.3.4 (the last for Python 2.7) can run
# straight from its wheel to install itself; python3's pip fetches the wheels.
python3 -m pip download -q --disable-pip-version-check --no-deps -d "$work/wheels" \
  pip==20.3.4 setuptools==44.1.1
pip2=(--disable-pip-version-check --no-python-version-warning -q install --user
  --no-warn-script-location)
"$py" "$work/wheels/pip-20.3.4-py2.py3-none-any.whl/pip" "${pip2[@]}" --no-index \
  "$work"/wheels/*.whl
# Some dependencies (wsaccel) build C extensions: the unpacked Python's
# sysconfig points at /usr/include, so show the compiler the prefix's headers.
export CFLAGS="-I$prefix/usr/include/python2.7 -I$prefix/usr/include"
"$py" -m pip "${pip2[@]}" autobahntestsuite==25.10.1

"$here/wstest" -a
