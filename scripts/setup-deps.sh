#!/usr/bin/env bash
# Installs what sdcc-twisted needs on this machine; sourced by serve.sh and test.sh.
#   setup-deps.sh serve   the server: Python packages and redis-server
#   setup-deps.sh test    also the peers the tests drive: DCMTK, Orthanc, redis-sentinel and pynetdicom
set -euo pipefail
what="${1:-serve}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
if [ "$what" = test ] && ! command -v redis-sentinel >/dev/null 2>&1; then
  apt_packages+=(redis-sentinel)
fi
if [ "$what" = test ] && ! /usr/bin/storescu --version 2>/dev/null | grep -qi dcmtk; then
  apt_packages+=(dcmtk)
fi
if [ "$what" = test ] && ! command -v Orthanc >/dev/null 2>&1 && [ ! -x /usr/sbin/Orthanc ]; then
  apt_packages+=(orthanc)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${apt_packages[*]} with apt-get" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_packages[@]}" >/dev/null
  else
    echo "setup: please install ${apt_packages[*]} (not root, or no apt-get)" >&2
  fi
fi

extra=""
[ "$what" = test ] && extra="[test]"
echo "setup: pip install ${repo}${extra}" >&2
"$PYTHON" -m pip install -q --disable-pip-version-check "${repo}${extra}" 2>&1 \
  | grep -v -E "^WARNING: (Running pip as|Location .* is ignored)" >&2 || true
# pip's build leaves these behind in the source tree.
rm -rf "$repo/build" "$repo"/*.egg-info
