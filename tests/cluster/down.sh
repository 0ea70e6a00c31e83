#!/usr/bin/env bash
# Stops the local cluster started by up.sh and removes every process and host path it created:
# containers (through containerd, by id), then the recorded PIDs, the pods' network namespaces
# (the paths containerd recorded for each sandbox), the cluster's network namespace (named in
# $STATE/netns: with it go the node interface, the pod bridge, the veths, every iptables chain
# kube-proxy made and kube-network-policies' nftables table), mounts under $STATE, the
# kubepods cgroups, the paths listed in $STATE/created, and $STATE itself (CNI address state
# included). Never kills or deletes by name pattern.
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

stop_group() { # name: a forward (socat forks a child per connection: end the whole group)
  local pid; pid=$(pid_of "$1") || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null; sleep 0.1
}

log "stopping kubelet"
stop_pid kubelet
pod_netns=()
if [ -S "$CTR_SOCK" ] && kill -0 "$(pid_of containerd)" 2>/dev/null; then
  # The network namespace of every pod sandbox, as containerd recorded it.
  # One python for all containers: a python start per container took ~0.4 s, 20 min for the
  # 3,000 containers of a 1,000-pod benchmark.
  mapfile -t pod_netns < <(ctr_ containers ls -q 2>/dev/null | CTR_SOCK="$CTR_SOCK" python3 -c '
import json, os, subprocess, sys
for cid in sys.stdin.read().split():
    out = subprocess.run(["ctr", "--address", os.environ["CTR_SOCK"], "-n", "k8s.io", "containers", "info", cid],
                         capture_output=True, text=True).stdout
    try:
        spec = json.loads(out).get("Spec") or {}
    except ValueError:
        continue
    for n in (spec.get("linux") or {}).get("namespaces") or []:
        if n.get("type") == "network" and n.get("path", "").startswith("/var/run/netns/"):
            print(n["path"])' 2>/dev/null)
  log "removing containers"
  # Eight ctr calls at a time: one after the other, 3,000 containers take minutes.
  ctr_ tasks ls -q 2>/dev/null | xargs -r -P 8 -n 1 ctr --address "$CTR_SOCK" -n k8s.io tasks kill -s SIGKILL >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do
    [ -z "$(ctr_ tasks ls 2>/dev/null | awk 'NR > 1 && $3 != "STOPPED"')" ] && break
    sleep 0.2
  done
  ctr_ tasks ls -q 2>/dev/null | xargs -r -P 8 -n 1 ctr --address "$CTR_SOCK" -n k8s.io tasks delete -f >/dev/null 2>&1 || true
  ctr_ containers ls -q 2>/dev/null | xargs -r -P 8 -n 50 ctr --address "$CTR_SOCK" -n k8s.io containers delete >/dev/null 2>&1 || true
fi
# Anything still running in the pod cgroups (by PID from cgroup.procs).
for procs in $(kubepods_dirs | xargs -r -I@ find @ -name cgroup.procs 2>/dev/null); do
  while read -r p; do [ -n "$p" ] && kill -KILL "$p" 2>/dev/null; done < "$procs"
done
# containerd shims are children of containerd's session; they exit once their tasks are gone.
for name in kube-proxy kube-network-policies coredns moto; do
  log "stopping $name"; stop_pid "$name"
done
for name in apiserver-host apiserver-ns moto-host moto-ns; do stop_group "$name"; done
for name in containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do
  log "stopping $name"; stop_pid "$name"
done
# Shims left behind (re-parented): find them by their -address argument naming our socket.
for p in $(grep -l -a -- "$CTR_SOCK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
  [ "$p" != "$$" ] && kill -KILL "$p" 2>/dev/null
done

for ns in $(printf '%s\n' "${pod_netns[@]:-}" | sort -u); do
  [ -e "$ns" ] || continue
  umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null
  rm -f "$ns"
done
if [ -f "$STATE/netns" ]; then
  netns=$(cat "$STATE/netns")
  log "removing network namespace $netns"
  ip netns del "$netns" 2>/dev/null
fi

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
if [ -f "$STATE/created-if-empty" ]; then
  while read -r p; do rmdir "$p" 2>/dev/null; done < "$STATE/created-if-empty"
fi
rm -rf "$STATE"
left=$(kubepods_dirs)
[ -z "$left" ] || log "WARNING: cgroups left: $left"
log "stopped; removed $STATE"
