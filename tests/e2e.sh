#!/usr/bin/env bash
# Runs end-to-end tests on a local cluster, for development: brings the cluster up if it is not
# running (tests/cluster/up.sh), builds and imports the images, and runs `cargo test -p dso-e2e`
# with the given arguments inside the cluster's network namespace. tests/run.sh is what CI runs.
#   tests/e2e.sh --test webhook                 # one e2e file
#   tests/e2e.sh --test chart -- some_test_name # one test
#   tests/e2e.sh --down                         # tear the cluster down
# Several clusters can run side by side: give each its own DSO_CLUSTER_DIR, DSO_APISERVER_PORT
# and DSO_CLUSTER_MOTO_PORT.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# shellcheck source=tests/cluster/common.sh
. tests/cluster/common.sh
export PATH="$BIN:$PATH"
if [ "${1:-}" = --down ]; then
  tests/cluster/down.sh
  exit 0
fi
if ! [ -f "$STATE/pids/kube-apiserver" ] || ! kill -0 "$(cat "$STATE/pids/kube-apiserver")" 2>/dev/null; then
  [ -d "$STATE" ] && tests/cluster/down.sh
  tests/cluster/up.sh
fi
DSO_BIN_DIR=$(tests/images.sh --import)
export DSO_BIN_DIR KUBECONFIG="$KUBECONFIG_OUT" DSO_POD_LOGS_DIR="$STATE/pod-logs"
export DSO_INIT_IMAGE=dso.local/dso-init:dev DSO_BUSYBOX_IMAGE=dso.local/busybox:1
cargo test -p dso-e2e --locked --no-run
DSO_MOTO_ENDPOINT="http://127.0.0.1:$MOTO_NS_PORT" DSO_POD_AWS_ENDPOINT="$MOTO_POD_ENDPOINT" \
  DSO_NETNS="$NETNS" DSO_CLUSTER_DIR="$STATE" in_ns cargo test -p dso-e2e --locked "$@"
