# Shared settings of the local cluster scripts. Sourced, not run.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CACHE=${DSO_CACHE:-/var/cache/dso}
BIN="$CACHE/k8s-$K8S_VERSION/bin"
COREDNS_BIN=${DSO_COREDNS_BIN:-$CACHE/coredns-$COREDNS_VERSION/coredns}
KNP_BIN=${DSO_KNP_BIN:-$CACHE/kube-network-policies-$KUBE_NETWORK_POLICIES_VERSION-$(sha256sum "$here/kube-network-policies.patch" | cut -c1-12)/kube-network-policies}
STATE=${DSO_CLUSTER_DIR:-/tmp/dso-cluster}
NODE_NAME=${DSO_NODE_NAME:-dso-node}
KUBECONFIG_OUT="$STATE/kubeconfig"
CTR_SOCK="$STATE/containerd/containerd.sock"

# The whole cluster (control plane, containerd, kubelet, kube-proxy, CoreDNS, moto, the pod
# bridge and the pods) lives in one network namespace, like a kind node: every non-loopback
# address is inside it and it has no route out of the machine. Its name derives from the state
# directory, so a second cluster (another DSO_CLUSTER_DIR) gets its own namespace, and with it
# its own bridge, addresses and iptables chains. Addresses and ports below are inside it.
NETNS=${DSO_NETNS:-dso-$(printf '%s' "$STATE" | sha256sum | cut -c1-8)}
NETNS_PATH=/run/netns/$NETNS
NODE_IP=${DSO_NODE_IP:-10.250.0.2}
BRIDGE=dso-br0
POD_CIDR=${DSO_POD_CIDR:-10.244.0.0/24}
SERVICE_CIDR=${DSO_SERVICE_CIDR:-10.0.0.0/24}
KUBERNETES_SVC_IP=10.0.0.1
DNS_SVC_IP=10.0.0.10
CLUSTER_DOMAIN=cluster.local
ETCD_PORT=2379
ETCD_PEER_PORT=2380
API_PORT=${DSO_APISERVER_PORT:-16443}   # also the host port forwarded to it (127.0.0.1)
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
CM_PORT=10257
SCHED_PORT=10259
PROXY_HEALTHZ_PORT=10256
DNS_READY_PORT=8181
KNP_METRICS_PORT=9080
KNP_QUEUE=100   # kube-network-policies' default nfqueue
# moto (the AWS emulator) serves the cluster on the node address; pods reach it by name through
# a Service, the host reaches it through a forward.
MOTO_NS_PORT=5055
MOTO_HOST_PORT=${DSO_CLUSTER_MOTO_PORT:-15055}
MOTO_POD_ENDPOINT="http://moto.aws.svc.$CLUSTER_DOMAIN:$MOTO_NS_PORT"

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }
ctr_() { ctr --address "$CTR_SOCK" -n k8s.io "$@"; }
# Runs a command in the cluster's network namespace (network only: kubelet, containerd and
# runc must share the host's mount namespace, so no `ip netns exec`).
in_ns() { nsenter --net="$NETNS_PATH" "$@"; }
# The kubelet's own cgroup root (its pods live below it), so two local clusters, or another
# kubelet on the host, never share or tear down each other's pods.
CGROUP_ROOT=${DSO_CGROUP_ROOT:-/$(basename "$STATE")}
# That root in every hierarchy: one per controller on cgroup v1, the unified one on v2.
kubepods_dirs() { ls -d /sys/fs/cgroup/*"$CGROUP_ROOT" /sys/fs/cgroup"$CGROUP_ROOT" 2>/dev/null; }
