#!/usr/bin/env bash
# Stops the local cluster started by up.sh and removes every process and host path it created:
# containers (through containerd, by id), then the recorded PIDs, mounts under $STATE, the
# kubepods cgroups, the paths listed in $STATE/created, and $STATE itself. Never kills by name.
set -uo pipefail
. "$(dirname "$0")/common.sh"

[ -d "$STATE" ] || { log "nothing to stop ($STATE does not exist)"; exit 0; }

pid_of() { [ -f "$STATE/pids/$1" ] && cat "$STATE/pids/$1"; }
stop_pid() { # name
  local pid; pid=$(pid_of "$1") || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null; sleep 0.1
}

log "stopping kubelet"
stop_pid kubelet
if [ -S "$CTR_SOCK" ] && kill -0 "$(pid_of containerd)" 2>/dev/null; then
  log "removing containers"
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1; done
  for _ in $(seq 1 30); do
    [ -z "$(ctr_ tasks ls -q 2>/dev/null | while read -r id; do ctr_ tasks ls 2>/dev/null | awk -v i="$id" '$1==i && $3!="STOPPED"'; done)" ] && break
    sleep 0.2
  done
  for id in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1; done
  for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1; done
fi
# Anything still running in the pod cgroups (by PID from cgroup.procs).
for procs in $(kubepods_dirs | xargs -r -I@ find @ -name cgroup.procs 2>/dev/null); do
  while read -r p; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null; done < "$procs"
done
# containerd shims are children of containerd's session; they exit once their tasks are gone.
for name in containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do
  log "stopping $name"; stop_pid "$name"
done
# Shims left behind (re-parented): find them by their -address argument naming our socket.
for p in $(grep -l -a -- "$CTR_SOCK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
  [ "$p" != "$$" ] && kill -KILL "$p" 2>/dev/null
done

log "unmounting"
awk -v s="$STATE" '$2 ~ "^"s {print $2}' /proc/self/mounts | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
done
log "removing cgroups"
for _ in 1 2 3; do
  kubepods_dirs | xargs -r -I@ find @ -depth -type d 2>/dev/null | while read -r d; do rmdir "$d" 2>/dev/null; done
done
if [ -f "$STATE/created" ]; then
  while read -r p; do rm -rf "$p"; done < "$STATE/created"
fi
rm -rf "$STATE"
left=$(kubepods_dirs)
[ -z "$left" ] || log "WARNING: cgroups left: $left"
log "stopped; removed $STATE"
