#!/usr/bin/env bash
# Starts a real single-node Kubernetes from pinned upstream components, shaped like a kind node:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a node (kubelet + containerd +
# runc) with a pod network (CNI bridge + host-local), kube-proxy (iptables mode) for Services,
# kube-network-policies (SIG Network) enforcing NetworkPolicies, CoreDNS for cluster.local, and moto (the AWS emulator) behind the Service moto.aws.
#
# All of it runs in one network namespace ($NETNS) with no route out of the machine; the host
# reaches the API server through a forward on 127.0.0.1:$API_PORT and moto on
# 127.0.0.1:$MOTO_HOST_PORT. Writes $DSO_CLUSTER_DIR/kubeconfig (default /tmp/dso-cluster),
# valid on the host and inside the namespace, and waits until the node is Ready, Services
# route and CoreDNS answers. Stop it with tests/cluster/down.sh.
#
# Every process it starts is recorded by PID in $STATE/pids; every host path it creates lives
# under $STATE, except those the kubelet insists on, which are recorded in $STATE/created; the
# network namespace's name is recorded in $STATE/netns.
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ "$(id -u)" = 0 ] || die "the local node needs root (kubelet, containerd, runc, network namespace)"
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
  [ -x "$BIN/$c" ] || die "$BIN/$c is missing: run tests/cluster/deps.sh first"
done
[ -x "$COREDNS_BIN" ] || die "$COREDNS_BIN is missing: run tests/cluster/deps.sh first"
[ -x "$KNP_BIN" ] || die "$KNP_BIN is missing: run tests/cluster/deps.sh first"
for c in etcd containerd runc ctr openssl python3 cc ip nsenter iptables-restore nft socat moto_server; do
  command -v "$c" >/dev/null || die "$c is missing: run tests/cluster/deps.sh first"
done
[ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install busybox-static (tests/cluster/deps.sh does)"
if [ -f "$STATE/pids/kube-apiserver" ] && kill -0 "$(cat "$STATE/pids/kube-apiserver")" 2>/dev/null; then
  die "a local cluster is already running in $STATE: run tests/cluster/down.sh first"
fi
[ -e "$NETNS_PATH" ] && die "network namespace $NETNS exists (a cluster in $STATE was not torn down): run tests/cluster/down.sh"
t0=$(date +%s.%N)
rm -rf "$STATE"
mkdir -p "$STATE"/{pids,logs,pki,etcd,kubelet,pod-logs,images,cni/net.d,cni/ipam,containerd,fwd}
chmod 700 "$STATE"
# Host paths outside $STATE that the node may create: recorded now if absent, removed by down.sh.
for p in /var/log/containers /etc/cni /opt/cni; do
  [ -e "$p" ] || echo "$p" >> "$STATE/created"
done
# The directory of named network namespaces is shared with whatever else uses `ip netns`:
# removed only if absent now and empty at the end.
[ -e /run/netns ] || echo /run/netns >> "$STATE/created-if-empty"

start() { # name cmd... : runs in the cluster's network namespace (nsenter execs: same PID)
  local name=$1; shift
  setsid nsenter --net="$NETNS_PATH" "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/$name"
}
start_host() { # name cmd... : runs on the host (the forwards)
  local name=$1; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/$name"
}
wait_for() { # description seconds command...
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || fail_with_log "$what not ready after ${secs}s" "${WAIT_LOG:-}"
    sleep 0.2
  done
}
fail_with_log() { # message [component]: dies with the component's log tail
  if [ -n "${2:-}" ] && [ -f "$STATE/logs/$2.log" ]; then
    printf '[cluster] last lines of %s:\n' "$STATE/logs/$2.log" >&2
    tail -n 25 "$STATE/logs/$2.log" >&2
  fi
  die "$1 (logs in $STATE/logs; tests/cluster/down.sh cleans up)"
}
alive() { kill -0 "$(cat "$STATE/pids/$1")" 2>/dev/null || fail_with_log "$1 exited" "$1"; }

log "network namespace $NETNS (node $NODE_IP, pods $POD_CIDR, services $SERVICE_CIDR)"
ip netns add "$NETNS"
echo "$NETNS" > "$STATE/netns"
# The node's address sits on the namespace's loopback device (these kernels have no dummy
# interfaces and no modprobe): local to the node, reachable from pods through their gateway.
in_ns ip link set lo up
in_ns ip addr add "$NODE_IP/32" dev lo
# Service IPs are only ever DNAT targets of kube-proxy; a route lets local clients (the API
# server calling a webhook Service) send to them. There is no default route: nothing leaves.
in_ns ip route add "$SERVICE_CIDR" dev lo src "$NODE_IP"
in_ns sysctl -qw net.ipv4.ip_forward=1
in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true

# The kubelet's cgroup root must exist before it starts.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  mkdir -p "/sys/fs/cgroup$CGROUP_ROOT"
  for c in $(cat /sys/fs/cgroup/cgroup.subtree_control); do echo "+$c" > "/sys/fs/cgroup$CGROUP_ROOT/cgroup.subtree_control" 2>/dev/null || true; done
else
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] || continue
    mkdir -p "$h${CGROUP_ROOT#/}"
  done
  # A new cpuset cgroup starts with no CPUs or memory nodes: inherit the root's.
  cs=/sys/fs/cgroup/cpuset
  if [ -d "$cs${CGROUP_ROOT}" ]; then
    cat "$cs/cpuset.cpus" > "$cs$CGROUP_ROOT/cpuset.cpus"
    cat "$cs/cpuset.mems" > "$cs$CGROUP_ROOT/cpuset.mems"
  fi
fi

log "PKI"
pki="$STATE/pki"
(
  cd "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3 -subj "/CN=dso-local-ca" 2>/dev/null
  cert() { # name subject [san]
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    # v3 extensions always: rustls (webpki) refuses v1 certificates.
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' > "$1.ext"
    if [ -n "${3:-}" ]; then printf 'subjectAltName=%s\n' "$3" >> "$1.ext"; fi
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 3 -extfile "$1.ext" 2>/dev/null
  }
  cert apiserver "/CN=kube-apiserver" "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,IP:127.0.0.1,IP:$KUBERNETES_SVC_IP,IP:$NODE_IP"
  cert admin "/O=system:masters/CN=dso-admin"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  cert kube-proxy "/CN=system:kube-proxy"
  cert kube-network-policies "/CN=dso-local:kube-network-policies"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
)

kubeconfig() { # file user
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: dso-local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: dso-local
  context: {cluster: dso-local, user: $2}
current-context: dso-local
KC
}
# The same file works on the host (through the forward) and inside the namespace (directly).
kubeconfig "$KUBECONFIG_OUT" admin
for c in controller-manager scheduler kubelet kube-proxy kube-network-policies; do kubeconfig "$STATE/$c.kubeconfig" "$c"; done

log "etcd"
start etcd etcd --name dso --data-dir "$STATE/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "dso=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn

log "containerd + runc (runtime state under $STATE)"
cc -O2 -static -o "$STATE/images/pause" "$here/pause.c"
cat > "$STATE/containerd/config.toml" <<TOML
version = 2
root = "$STATE/containerd/root"
state = "$STATE/containerd/state"
[grpc]
  address = "$CTR_SOCK"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "dso.local/pause:1"
  restrict_oom_score_adj = true
  enable_cdi = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$STATE/runc"
        BinaryName = "$(command -v runc)"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
TOML
# The pod network: a bridge inside the namespace, addresses from host-local (its state under
# $STATE), the bridge as the pods' gateway, no masquerade (there is nowhere to masquerade to).
cat > "$STATE/cni/net.d/10-dso-pods.conflist" <<CNI
{"cniVersion": "1.0.0", "name": "dso-pods", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$STATE/cni/ipam",
            "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
CNI
start containerd containerd --config "$STATE/containerd/config.toml"

log "kube-apiserver $K8S_VERSION"
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address 0.0.0.0 --advertise-address "$NODE_IP" \
  --secure-port "$API_PORT" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --api-audiences https://kubernetes.default.svc,sts.amazonaws.com \
  --service-cluster-ip-range "$SERVICE_CIDR" --authorization-mode Node,RBAC --allow-privileged=true \
  --enable-admission-plugins NodeRestriction \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --profiling=false --v=1

log "moto (AWS emulator) on $NODE_IP:$MOTO_NS_PORT"
start moto moto_server -H 0.0.0.0 -p "$MOTO_NS_PORT"

log "forwards: host 127.0.0.1:$API_PORT -> API server, 127.0.0.1:$MOTO_HOST_PORT -> moto"
forward() { # name host-port ns-port
  start "$1-ns" socat "UNIX-LISTEN:$STATE/fwd/$1.sock,fork,unlink-early,mode=600" "TCP:127.0.0.1:$3"
  start_host "$1-host" socat "TCP-LISTEN:$2,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$STATE/fwd/$1.sock"
}
forward apiserver "$API_PORT" "$API_PORT"
forward moto "$MOTO_HOST_PORT" "$MOTO_NS_PORT"

# Images for the node, built offline from static binaries: the sandbox and a busybox shell.
python3 "$here/mkimage.py" -t dso.local/pause:1 -o "$STATE/images/pause.tar" \
  --file "$STATE/images/pause:/pause:755" --entrypoint /pause --user 65535:65535
python3 "$here/mkimage.py" -t dso.local/busybox:1 -o "$STATE/images/busybox.tar" \
  --file /bin/busybox:/bin/busybox:755 --dir /tmp:1777 --cmd /bin/sh \
  $(/bin/busybox --list | grep -vx busybox | sed 's|.*|--link /bin/&:busybox|')
WAIT_LOG=containerd wait_for containerd 30 ctr_ version
for img in pause busybox; do ctr_ images import --no-unpack "$STATE/images/$img.tar" >/dev/null; done
# Pinned: the kubelet's image GC and disk-pressure eviction never remove the sandbox image (a
# full disk once left every new pod without one: "failed to get sandbox image").
ctr_ images label dso.local/pause:1 io.cri-containerd.pinned=pinned >/dev/null
for extra in "${DSO_NODE_IMAGES[@]:-}"; do
  [ -n "$extra" ] && ctr_ images import "$extra" >/dev/null
done

export KUBECONFIG="$KUBECONFIG_OUT"
k() { in_ns "$BIN/kubectl" "$@"; }
WAIT_LOG=kube-apiserver wait_for kube-apiserver 60 k get --raw /readyz
log "kube-apiserver ready"

start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$STATE/controller-manager.kubeconfig" --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$CM_PORT" --controllers '*' --leader-elect=false \
  --use-service-account-credentials=true --service-account-private-key-file "$pki/sa.key" \
  --root-ca-file "$pki/ca.crt" --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --service-cluster-ip-range "$SERVICE_CIDR" --v=1
start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig "$STATE/scheduler.kubeconfig" --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
  --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false --v=1

# An empty resolv.conf: pods get only cluster DNS, never the host's resolvers.
: > "$STATE/resolv.conf"
cat > "$STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CTR_SOCK
podLogsDir: $STATE/pod-logs
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: [$DNS_SVC_IP]
resolvConf: $STATE/resolv.conf
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
localStorageCapacityIsolation: true
maxPods: ${DSO_KUBELET_MAX_PODS:-110}
YAML
log "kubelet"
start kubelet "$BIN/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
  --root-dir "$STATE/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1

log "kube-proxy (iptables mode)"
cat > "$STATE/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false}
# The namespace cannot change the host's conntrack table size: leave it alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
start kube-proxy "$BIN/kube-proxy" --config "$STATE/kube-proxy.yaml" --v=1

# NetworkPolicy enforcement, as a node process like kube-proxy: its nftables table (inet
# kube-network-policies) sends the first packet of every connection to or from a pod that a
# policy selects to its nfqueue, and it answers accept or drop. Traffic of root processes on
# the node (the API server, the kubelet's probes) is never queued: upstream's own rule. The
# table lives in the cluster's network namespace and goes with it. It reads what the upstream
# ClusterRole grants (install.yaml), under its own client certificate.
log "kube-network-policies $KUBE_NETWORK_POLICIES_VERSION (NetworkPolicy)"
k apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: dso-local:kube-network-policies}
rules:
- {apiGroups: [""], resources: [pods, namespaces], verbs: [list, watch]}
- {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: dso-local:kube-network-policies}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: dso-local:kube-network-policies}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "dso-local:kube-network-policies"}]
YAML
# NRI needs containerd 1.7+ (Debian 12 has 1.6): its plugin fails to connect and pod IPs come
# from the API server. (Not --disable-nri: then an address no pod holds, e.g. the bridge's,
# crashes v0.8.0 on a nil NRI plugin.) The DNS workaround is only for kernels before 6.12.
knp_dns_fix=true
if printf '6.12\n%s\n' "$(uname -r | cut -d- -f1)" | sort -C -V; then knp_dns_fix=false; fi
start kube-network-policies "$KNP_BIN" --kubeconfig "$STATE/kube-network-policies.kubeconfig" \
  --hostname-override "$NODE_NAME" --metrics-bind-address "127.0.0.1:$KNP_METRICS_PORT" \
  --netfilter-bug-1766-fix="$knp_dns_fix" --v=1

log "CoreDNS $COREDNS_VERSION for $CLUSTER_DOMAIN"
kubeconfig "$STATE/coredns.kubeconfig" admin
cat > "$STATE/Corefile" <<COREFILE
.:53 {
    bind $NODE_IP
    errors
    ready 127.0.0.1:$DNS_READY_PORT
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $STATE/coredns.kubeconfig dso-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
COREFILE
start coredns "$COREDNS_BIN" -conf "$STATE/Corefile"

# Services the node's host processes serve: cluster DNS and moto (selectorless, with an
# EndpointSlice on the node address, as an external service would be modelled).
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: aws}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_SVC_IP
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-node, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns, endpointslice.kubernetes.io/managed-by: dso-local-cluster}}
addressType: IPv4
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: moto, namespace: aws}
spec:
  ports: [{name: http, port: $MOTO_NS_PORT, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: moto-node, namespace: aws, labels: {kubernetes.io/service-name: moto, endpointslice.kubernetes.io/managed-by: dso-local-cluster}}
addressType: IPv4
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
ports: [{name: http, port: $MOTO_NS_PORT, protocol: TCP}]
YAML

WAIT_LOG=kubelet wait_for "node $NODE_NAME" 90 sh -c "nsenter --net=$NETNS_PATH \"$BIN/kubectl\" get node \"$NODE_NAME\" -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
for c in kube-proxy kube-network-policies coredns moto; do alive "$c"; done
WAIT_LOG=kube-proxy wait_for kube-proxy 30 in_ns curl -fs -m 2 "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"
# Enforcing means: its rules are in the kernel (a kernel that refuses them leaves no table, and
# upstream carries on enforcing nothing) and its nfqueue is bound.
WAIT_LOG=kube-network-policies wait_for "kube-network-policies' nftables rules" 30 sh -c "nsenter --net=$NETNS_PATH nft list chain inet kube-network-policies postrouting | grep -Eq 'queue num $KNP_QUEUE|NFQUEUE'"
WAIT_LOG=kube-network-policies wait_for "kube-network-policies' nfqueue $KNP_QUEUE" 30 sh -c "nsenter --net=$NETNS_PATH cat /proc/net/netfilter/nfnetlink_queue | awk '\$1 == $KNP_QUEUE' | grep -q ."
WAIT_LOG=coredns wait_for CoreDNS 30 in_ns curl -fs -m 2 "http://127.0.0.1:$DNS_READY_PORT/ready"
# Through the Service IP (kube-proxy's rules) and by name (CoreDNS): what pods will do. Every
# try is short (-m 2): a SYN sent before kube-proxy's rules exist is lost, and curl would wait
# minutes on that one connection.
WAIT_LOG=kube-proxy wait_for "the kubernetes Service" 60 in_ns curl -ks -m 2 "https://$KUBERNETES_SVC_IP/readyz"
WAIT_LOG=coredns wait_for "cluster DNS" 60 sh -c "nsenter --net=$NETNS_PATH python3 '$here/dnsquery.py' $DNS_SVC_IP moto.aws.svc.$CLUSTER_DOMAIN | grep -q ."
WAIT_LOG=moto wait_for "moto through its Service" 30 in_ns curl -fs -m 2 -o /dev/null "http://$(in_ns python3 "$here/dnsquery.py" "$DNS_SVC_IP" "moto.aws.svc.$CLUSTER_DOMAIN"):$MOTO_NS_PORT/moto-api/"
WAIT_LOG=apiserver-host wait_for "the host forward to the API server" 15 "$BIN/kubectl" get --raw /readyz
WAIT_LOG=kube-controller-manager wait_for "default ServiceAccount" 30 k -n default get serviceaccount default
t1=$(date +%s.%N)
log "node $NODE_NAME Ready, Services and DNS answering in $(python3 -c "print(f'{$t1-$t0:.1f}')")s"
echo "export KUBECONFIG=$KUBECONFIG_OUT PATH=$BIN:\$PATH"
