#!/usr/bin/env bash
# Runs down.sh and proves it: every process the cluster started (recorded PIDs, pod processes,
# containerd shims) is gone, and so is every host path it created ($STATE, the paths recorded in
# $STATE/created, kubepods cgroups, mounts under $STATE). Exits non-zero naming what is left.
set -uo pipefail
. "$(dirname "$0")/common.sh"
[ -d "$STATE" ] || die "no cluster state in $STATE"
pids=$(cat "$STATE"/pids/* 2>/dev/null)
pids="$pids $(kubepods_dirs | xargs -r -I@ find @ -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)"
pids="$pids $(grep -l -a -- "$CTR_SOCK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3)"
paths="$STATE $(cat "$STATE/created" 2>/dev/null)"
n=$(echo "$pids" | wc -w)
"$(dirname "$0")/down.sh"
bad=0
for p in $pids; do
  if kill -0 "$p" 2>/dev/null; then echo "still running: PID $p ($(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null))"; bad=1; fi
done
for p in $paths; do [ -e "$p" ] && { echo "still present: $p"; bad=1; }; done
if [ -n "$(kubepods_dirs)" ]; then echo "cgroups left: $(kubepods_dirs | tr '\n' ' ')"; bad=1; fi
if grep -q " $STATE" /proc/self/mounts; then echo "mounts left under $STATE"; bad=1; fi
[ $bad = 0 ] || die "teardown left things behind"
echo "teardown verified: $n processes ended, no host path left"
