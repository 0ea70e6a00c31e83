#!/usr/bin/env bash
# Restarts only the kube-apiserver of the local cluster given by DSO_CLUSTER_DIR (default
# /tmp/dso-cluster), with the command line it runs with now, and waits until it is ready again.
# etcd, the controllers, the node and the host forward are left alone: clients see the API
# server go away and come back, as in a control-plane upgrade. For reliability tests.
#   tests/cluster/restart-apiserver.sh [DOWN_SECONDS]   # stays down that long (default 0)
# SIGTERM, then SIGKILL if it has not exited 5 s later (seen here: its graceful termination
# can take 15 s and more). Prints one line: "down <ms> ms" (from the stop signal until /readyz
# answers again).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"
down_for=${1:-0}
pidfile="$STATE/pids/kube-apiserver"
[ -f "$pidfile" ] || die "no kube-apiserver recorded in $STATE/pids: is the cluster in $STATE up?"
pid=$(cat "$pidfile")
# The recorded PID is this cluster's own apiserver (nsenter execs it): check before signalling.
[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = kube-apiserver ] || die "PID $pid (from $pidfile) is not a running kube-apiserver"
mapfile -d '' cmd < "/proc/$pid/cmdline"
start_ms=$(date +%s%3N)
kill -TERM "$pid"
for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; sleep 0.2; fi
sleep "$down_for"
setsid nsenter --net="$NETNS_PATH" "${cmd[@]}" >>"$STATE/logs/kube-apiserver.log" 2>&1 < /dev/null &
echo $! > "$pidfile"
export KUBECONFIG="$KUBECONFIG_OUT"
for _ in $(seq 1 300); do
  if nsenter --net="$NETNS_PATH" "$BIN/kubectl" get --raw /readyz >/dev/null 2>&1; then
    echo "down $(( $(date +%s%3N) - start_ms )) ms"
    exit 0
  fi
  kill -0 "$(cat "$pidfile")" 2>/dev/null || { tail -n 25 "$STATE/logs/kube-apiserver.log" >&2; die "kube-apiserver exited after the restart"; }
  sleep 0.2
done
die "kube-apiserver not ready 60 s after the restart (log: $STATE/logs/kube-apiserver.log)"
