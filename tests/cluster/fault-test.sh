#!/usr/bin/env bash
# Proves up.sh fails loudly and down.sh still cleans up when a cluster component cannot start:
# a cluster in its own state dir (and network namespace) whose CoreDNS exits at once. up.sh must
# exit non-zero naming CoreDNS and printing its log tail; verify-teardown.sh must then find
# nothing left. Runs beside another cluster without touching it.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DSO_CLUSTER_DIR=${DSO_FAULT_CLUSTER_DIR:-/tmp/dso-fault-test}
export DSO_APISERVER_PORT=${DSO_FAULT_APISERVER_PORT:-36999} DSO_CLUSTER_MOTO_PORT=${DSO_FAULT_MOTO_PORT:-36998}
# A CoreDNS that writes a line to its log and exits.
fake=$(mktemp -d)/coredns
printf '#!/bin/sh\necho "plugin/kubernetes: fault-test: this CoreDNS refuses to start" >&2\nexit 1\n' > "$fake"
chmod +x "$fake"
out=$(DSO_COREDNS_BIN="$fake" "$here/up.sh" 2>&1); rc=$?
rm -rf "$(dirname "$fake")"
fail() { echo "[fault-test] FAILED: $*"; echo "$out" | tail -20; "$here/down.sh" >/dev/null 2>&1; exit 1; }
[ $rc -ne 0 ] || fail "up.sh succeeded with a CoreDNS that cannot start"
echo "$out" | grep -q "coredns exited" || fail "up.sh did not name CoreDNS"
echo "$out" | grep -q "fault-test: this CoreDNS refuses to start" || fail "up.sh did not print CoreDNS's log tail"
"$here/verify-teardown.sh" || fail "down.sh left things behind after a failed start"
echo "[fault-test] a CoreDNS that cannot start: up.sh exits $rc naming it with its log tail; teardown complete"
