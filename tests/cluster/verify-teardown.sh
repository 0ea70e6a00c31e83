#!/usr/bin/env bash
# Runs down.sh and proves it: every process the cluster started (recorded PIDs — control plane,
# node, kube-proxy, kube-network-policies, CoreDNS, moto, the forwards — pod processes,
# containerd shims) is gone, and so is every host path and network piece it created ($STATE
# with the CNI address state, the paths recorded in $STATE/created, kubepods cgroups, mounts
# under $STATE, the cluster's network namespace — and with it its bridge, veths, iptables
# chains and nftables table — and the pods' namespaces).
# Exits non-zero naming what is left.
set -uo pipefail
. "$(dirname "$0")/common.sh"
[ -d "$STATE" ] || die "no cluster state in $STATE"
pids=$(cat "$STATE"/pids/* 2>/dev/null)
pids="$pids $(kubepods_dirs | xargs -r -I@ find @ -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)"
pids="$pids $(grep -l -a -- "$CTR_SOCK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3)"
paths="$STATE $(cat "$STATE/created" 2>/dev/null)"
netns=$(cat "$STATE/netns" 2>/dev/null)
pod_netns=$(for id in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers info "$id" 2>/dev/null | grep -o '"/var/run/netns/[^"]*"' | tr -d '"'; done | sort -u)
paths="$paths $pod_netns"
n=$(echo "$pids" | wc -w)
"$(dirname "$0")/down.sh"
bad=0
for p in $pids; do
  if kill -0 "$p" 2>/dev/null; then echo "still running: PID $p ($(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null))"; bad=1; fi
done
for p in $paths; do [ -e "$p" ] && { echo "still present: $p"; bad=1; }; done
if [ -n "$(kubepods_dirs)" ]; then echo "cgroups left: $(kubepods_dirs | tr '\n' ' ')"; bad=1; fi
if grep -q " $STATE" /proc/self/mounts; then echo "mounts left under $STATE"; bad=1; fi
if [ -n "$netns" ] && ip netns list | grep -qw "$netns"; then echo "network namespace left: $netns"; bad=1; fi
for ns in $pod_netns; do grep -q " $ns " /proc/self/mounts && { echo "pod network namespace still mounted: $ns"; bad=1; }; done
if iptables -t nat -S 2>/dev/null | grep -q -- "$POD_CIDR"; then echo "host iptables mention the pod network $POD_CIDR"; bad=1; fi
if nft list table inet kube-network-policies >/dev/null 2>&1; then echo "host nftables hold the table kube-network-policies"; bad=1; fi
[ $bad = 0 ] || die "teardown left things behind"
echo "teardown verified: $n processes ended, no host path, network namespace ($netns + $(echo "$pod_netns" | wc -w) pod namespaces) or host iptables rule left"
