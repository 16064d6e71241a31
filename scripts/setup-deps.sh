#!/usr/bin/env bash
# Installs what sdcc-twisted needs on this machine.  serve.sh and test.sh
# source it; it leaves the project's Python in $venv_python.
#   setup-deps.sh serve   the server: redis-server, then the package in .venv
#   setup-deps.sh test    also the peers the tests drive (DCMTK, Orthanc,
#                         redis-sentinel,
#                         Chromium with chromium-driver for the status page)
#                         and the [test] extras (pynetdicom, selenium, ...)
#
# Python packages go into a project venv, .venv, made from $PYTHON (default
# python3), so a system Python marked externally managed (PEP 668) is never
# touched.  pip runs only when setup.cfg, pyproject.toml, the sources or the
# base Python changed since the last install (a stamp in .venv).  System
# packages come from apt-get when run as root; otherwise the missing ones are
# named and the run goes on (or stops, when nothing can work without them).
set -euo pipefail
what="${1:-serve}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base_python="${PYTHON:-python3}"
venv="$repo/.venv"

# apt packages per use, each "package|shell test that holds when it is there".
apt_serve=(
  "redis-server|command -v redis-server"
  "python3-venv|\"\$base_python\" -c 'import ensurepip, venv'"
)
apt_test=(
  "dcmtk|/usr/bin/storescu --version 2>/dev/null | grep -i dcmtk"
  "orthanc|command -v Orthanc || test -x /usr/sbin/Orthanc"
  "redis-sentinel|command -v redis-sentinel"
  "chromium|test -x /usr/bin/chromium"
  "chromium-driver|test -x /usr/bin/chromedriver"
)
# setup.cfg extras installed per use.
extras_serve=()
extras_test=(test)

wanted=("${apt_serve[@]}")
extras=("${extras_serve[@]}")
if [ "$what" = test ]; then
  wanted+=("${apt_test[@]}")
  extras+=("${extras_test[@]}")
fi

missing=()
for entry in "${wanted[@]}"; do
  eval "${entry#*|}" >/dev/null 2>&1 || missing+=("${entry%%|*}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing system packages: ${missing[*]}." >&2
    echo "setup: as root, run: apt-get install ${missing[*]}" >&2
  fi
fi

if ! "$base_python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "setup: $base_python cannot make a venv (on Debian/Ubuntu: apt-get install python3-venv)." >&2
  exit 1
fi

base_id="$("$base_python" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/sdcc-base" 2>/dev/null)" != "$base_id" ]; then
  echo "setup: making the project venv $venv from $base_id" >&2
  "$base_python" -m venv --clear "$venv"
  echo "$base_id" >"$venv/sdcc-base"
fi
venv_python="$venv/bin/python"

spec="$repo"
if [ ${#extras[@]} -gt 0 ]; then
  spec="$repo[$(IFS=,; echo "${extras[*]}")]"
fi
stamp="$( (echo "$base_id";
           cd "$repo" && find setup.cfg pyproject.toml sdcc_twisted twisted -name '*.py' -o -name '*.cfg' -o -name '*.toml' \
             | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -d' ' -f1)"
stamp_file="$venv/sdcc-installed-$what"   # one per use: test holds more
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: pip install $spec into $venv" >&2
  pip_log="$(mktemp)"
  if ! "$venv_python" -m pip install -q --disable-pip-version-check "$spec" >"$pip_log" 2>&1; then
    grep -v -E "^WARNING: Location .* is ignored" "$pip_log" >&2
    rm -f "$pip_log"
    echo "setup: pip install failed (above); nothing was started." >&2
    exit 1
  fi
  rm -f "$pip_log"
  # pip's build leaves these behind in the source tree.
  rm -rf "$repo/build" "$repo"/*.egg-info
  rm -f "$venv"/sdcc-installed-*
  echo "$stamp" >"$stamp_file"
  # The test install holds everything the server needs too.
  if [ "$what" = test ]; then
    echo "$stamp" >"$venv/sdcc-installed-serve"
  fi
fi
