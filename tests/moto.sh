#!/usr/bin/env bash
# Starts or stops a moto server (the AWS emulator) on 127.0.0.1 for tests.
#   tests/moto.sh start [PORT]   prints the endpoint; waits until it answers
#   tests/moto.sh stop  [PORT]
# State (PID, log) lives in ${DSO_MOTO_DIR:-/tmp/dso-moto-PORT}.
set -euo pipefail
cmd=${1:-}; port=${2:-${DSO_MOTO_PORT:-5055}}
dir=${DSO_MOTO_DIR:-/tmp/dso-moto-$port}
case "$cmd" in
  start)
    command -v moto_server >/dev/null || { echo "moto_server not found: pip install 'moto[server]' (tests/cluster/deps.sh does)" >&2; exit 1; }
    if [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then echo "http://127.0.0.1:$port"; exit 0; fi
    mkdir -p "$dir"
    setsid moto_server -H 127.0.0.1 -p "$port" >"$dir/log" 2>&1 < /dev/null &
    echo $! > "$dir/pid"
    for _ in $(seq 1 100); do
      if curl -fs -o /dev/null "http://127.0.0.1:$port/moto-api/"; then echo "http://127.0.0.1:$port"; exit 0; fi
      kill -0 "$(cat "$dir/pid")" 2>/dev/null || break
      sleep 0.1
    done
    echo "moto server did not start on port $port; log:" >&2; cat "$dir/log" >&2; exit 1;;
  stop)
    if [ -f "$dir/pid" ]; then kill "$(cat "$dir/pid")" 2>/dev/null || true; fi
    rm -rf "$dir";;
  *) echo "usage: $0 start|stop [PORT]" >&2; exit 2;;
esac
