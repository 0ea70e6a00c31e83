#!/usr/bin/env bash
# The InPlace cost benchmark (tests/e2e/examples/inplace_cost.rs) on the local cluster: brings
# the cluster up if needed (with room for the pods), builds and imports the images, and runs the
# benchmark in the cluster's network namespace. Not part of tests/run.sh (minutes, not seconds).
#   tests/bench-inplace.sh --pods 50 --secrets 5
#   tests/bench-inplace.sh --pods 1000 --secrets 100 --interval 10
#   tests/bench-inplace.sh --pods 50 --secrets 5 --peer csi     # then the peer, same proxy
#   tests/bench-inplace.sh --pods 50 --secrets 5 --systems csi  # the peer alone
# The peer (the Secrets Store CSI driver + AWS provider) is built by tests/bench-peer-csi-build.sh
# from the fetch mirror (or DSO_PEER_CSI_*_GIT), or taken from DSO_BENCH_PEER_CSI_DIR.
# The kubelet's maxPods and the pod network are sized by DSO_KUBELET_MAX_PODS (default here 1100)
# and DSO_POD_CIDR (default here 10.244.0.0/21) when this script starts the cluster; a cluster
# already running keeps its own (110 pods, a /24, with tests/e2e.sh's defaults).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export DSO_KUBELET_MAX_PODS=${DSO_KUBELET_MAX_PODS:-1100} DSO_POD_CIDR=${DSO_POD_CIDR:-10.244.0.0/21}
# containerd keeps ~20 descriptors open per running InPlace pod (stdout/stderr and shim log
# FIFOs of the pause, app and dso-refresh containers, and shim sockets) and inherits this
# shell's hard limit: at 20,000 (a sandbox without CAP_SYS_RESOURCE cannot raise it), 997 of
# 1,000 pods ran and the rest failed with "too many open files" (twice: an app with a tty has
# no stderr writer, and containerd then blocks a thread per pod in open(2) on its stderr FIFO,
# holding an fd number that /proc/<pid>/fd does not show: still ~20). Refuse what cannot start.
pods=$(printf '%s\n' "$@" | awk 'p {print; exit} $0 == "--pods" {p = 1}')
nofile=$(ulimit -Hn)
if [ -n "$pods" ] && [ "$nofile" != unlimited ] && [ "$pods" -gt $(((nofile - 200) / 20)) ]; then
  echo "bench: --pods $pods needs ~$((pods * 20 + 200)) open files in containerd; the hard limit here is $nofile (ulimit -Hn): at most $(((nofile - 200) / 20)) pods" >&2
  exit 2
fi
# shellcheck source=tests/cluster/common.sh
. tests/cluster/common.sh
export PATH="$BIN:$PATH"
if ! [ -f "$STATE/pids/kube-apiserver" ] || ! kill -0 "$(cat "$STATE/pids/kube-apiserver")" 2>/dev/null; then
  [ -d "$STATE" ] && tests/cluster/down.sh
  tests/cluster/up.sh
fi
# DSO_BENCH_BIN_DIR: operator and webhook binaries to use as they are (the images already
# imported); otherwise tests/images.sh builds and imports them.
built=${DSO_BENCH_BIN_DIR:-$(tests/images.sh --import)}
# A private copy: the shared target directory may be rebuilt from another checkout meanwhile.
DSO_BIN_DIR="$STATE/bench-bin"
mkdir -p "$DSO_BIN_DIR"
[ "$built" -ef "$DSO_BIN_DIR" ] || cp "$built/dso-operator" "$built/dso-webhook" "$DSO_BIN_DIR/"
grep -q rotation_propagation_seconds "$DSO_BIN_DIR/dso-operator" \
  || { echo "bench: $built/dso-operator lacks dso_rotation_propagation_seconds (built from another checkout?)" >&2; exit 1; }
export DSO_BIN_DIR KUBECONFIG="$KUBECONFIG_OUT" DSO_POD_LOGS_DIR="$STATE/pod-logs" DSO_CLUSTER_DIR="$STATE"
export DSO_INIT_IMAGE=dso.local/dso-init:dev DSO_BUSYBOX_IMAGE=dso.local/busybox:1
peer_args=()
case " $* " in
  *" --peer csi "*|*" --systems "*csi*)
    peer_dir=${DSO_BENCH_PEER_CSI_DIR:-$(tests/bench-peer-csi-build.sh)}
    peer_args=(--peer-bin-dir "$peer_dir" --peer-run-dir "$STATE/peer-csi")
    ;;
esac
cargo build -p dso-e2e --locked --example inplace_cost
target=${CARGO_TARGET_DIR:-$repo/target}
proxy_port=${DSO_BENCH_PROXY_PORT:-15099}
DSO_MOTO_ENDPOINT="http://127.0.0.1:$MOTO_NS_PORT" DSO_POD_AWS_ENDPOINT="$MOTO_POD_ENDPOINT" \
  in_ns "$target/debug/examples/inplace_cost" --proxy-port "$proxy_port" \
  --pod-aws-endpoint "http://$NODE_IP:$proxy_port" --kubelet-dir "$STATE/kubelet" "${peer_args[@]}" "$@"
