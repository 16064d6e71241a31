#!/usr/bin/env bash
# The multi-node example on loopback (README "Scaling out"): a Redis primary
# (6390), a replica (6391), three Sentinels (26379-26381) and two sdcc nodes
# (11112 and 11113) sharing var/multinode/data.
#   bash scripts/multinode-example.sh          start everything (in the background)
#   bash scripts/multinode-example.sh stop     stop what it started, by PID
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
run=var/multinode
PYTHON="${PYTHON:-python3}"
twistd() {
  "$PYTHON" -c 'import sys; from twisted.scripts.twistd import run; sys.argv[0] = "twistd"; run()' "$@"
}

if [ "${1:-start}" = stop ]; then
  for pidfile in "$run"/*.pid; do
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null && echo "stopped $(basename "$pidfile" .pid) (pid $pid)"
    rm -f "$pidfile"
  done
  exit 0
fi

# SDCC_NO_SETUP=1: the packages are in place already
[ -n "${SDCC_NO_SETUP:-}" ] || bash scripts/setup-deps.sh test >/dev/null
mkdir -p "$run/primary" "$run/replica" "$run/data"
server() {  # name port [redis-server arguments...]
  local name="$1" port="$2"; shift 2
  redis-server --port "$port" --bind 127.0.0.1 --dir "$repo/$run/$name" --appendonly yes \
    --daemonize yes --pidfile "$repo/$run/$name.pid" --logfile "$repo/$run/$name.log" "$@"
}
server primary 6390
server replica 6391 --replicaof 127.0.0.1 6390
for n in 0 1 2; do
  # Sentinel rewrites its file with what it learns: run a copy
  cp "etc/multinode/sentinel-$n.conf" "$run/sentinel-$n.conf"
  redis-sentinel "$run/sentinel-$n.conf" --daemonize yes --dir "$repo/$run" \
    --pidfile "$repo/$run/sentinel-$n.pid" --logfile "$repo/$run/sentinel-$n.log"
done
for node in node-a node-b; do
  twistd --pidfile "$run/$node.pid" --logfile "$run/$node.log" sdcc \
    --config "etc/multinode/$node.ini"
done
echo "two nodes: 127.0.0.1:11112 (node-a) and 127.0.0.1:11113 (node-b), AE title SDCC;"
echo "logs in $run/; stop with: bash scripts/multinode-example.sh stop"
