# Shared settings of the local cluster scripts. Sourced, not run.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CACHE=${DSO_CACHE:-/var/cache/dso}
BIN="$CACHE/k8s-$K8S_VERSION/bin"
STATE=${DSO_CLUSTER_DIR:-/tmp/dso-cluster}
NODE_NAME=${DSO_NODE_NAME:-dso-node}
ETCD_PORT=${DSO_ETCD_PORT:-23790}
ETCD_PEER_PORT=${DSO_ETCD_PEER_PORT:-23800}
API_PORT=${DSO_APISERVER_PORT:-16443}
KUBELET_PORT=${DSO_KUBELET_PORT:-10250}
KUBELET_HEALTHZ_PORT=${DSO_KUBELET_HEALTHZ_PORT:-10248}
CM_PORT=${DSO_CONTROLLER_MANAGER_PORT:-10257}
SCHED_PORT=${DSO_SCHEDULER_PORT:-10259}
KUBECONFIG_OUT="$STATE/kubeconfig"
CTR_SOCK="$STATE/containerd/containerd.sock"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }
ctr_() { ctr --address "$CTR_SOCK" -n k8s.io "$@"; }
# The kubelet's own cgroup root (its pods live below it), so two local clusters, or another
# kubelet on the host, never share or tear down each other's pods.
CGROUP_ROOT=${DSO_CGROUP_ROOT:-/$(basename "$STATE")}
# That root in every hierarchy: one per controller on cgroup v1, the unified one on v2.
kubepods_dirs() { ls -d /sys/fs/cgroup/*"$CGROUP_ROOT" /sys/fs/cgroup"$CGROUP_ROOT" 2>/dev/null; }
