#!/usr/bin/env bash
# One command: install what is missing, then run the server on etc/sdcc.ini
# (tcp:11112, AE title SDCC, embedded Redis, data in var/sdcc).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/setup-deps.sh serve
# twistd itself, from the same Python that the packages went into.
exec "${PYTHON:-python3}" -c 'import sys; from twisted.scripts.twistd import run; sys.argv[0] = "twistd"; run()' \
  -n --pidfile= sdcc --config "${1:-etc/sdcc.ini}"
