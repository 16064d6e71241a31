#!/usr/bin/env bash
# One command: install what is missing (into the project venv .venv), then run
# the server on etc/sdcc.ini (tcp:11112, AE title SDCC, embedded Redis, data
# in var/sdcc) in the foreground.  An argument names another INI file.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/setup-deps.sh serve
# The venv's twistd runs the installed package: its sys.path starts at
# .venv/bin, so the repository's own twisted/ folder is never on it.
exec "$venv/bin/twistd" -n --pidfile= sdcc --config "${1:-etc/sdcc.ini}"
