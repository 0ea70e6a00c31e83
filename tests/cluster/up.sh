#!/usr/bin/env bash
# Starts a real single-node Kubernetes on 127.0.0.1 from pinned upstream components:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and a node (kubelet +
# containerd + runc). Writes $DSO_CLUSTER_DIR/kubeconfig (default /tmp/dso-cluster) and waits
# until the node is Ready. Stop it with tests/cluster/down.sh.
#
# Every process it starts is recorded by PID in $STATE/pids; every host path it creates lives
# under $STATE, except those the kubelet insists on, which are recorded in $STATE/created.
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ "$(id -u)" = 0 ] || die "the local node needs root (kubelet, containerd, runc)"
for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
  [ -x "$BIN/$c" ] || die "$BIN/$c is missing: run tests/cluster/deps.sh first"
done
for c in etcd containerd runc ctr openssl python3 cc; do
  command -v "$c" >/dev/null || die "$c is missing: run tests/cluster/deps.sh first"
done
[ -x /bin/busybox ] || die "/bin/busybox is missing: apt-get install busybox-static (tests/cluster/deps.sh does)"
if [ -f "$STATE/pids/kube-apiserver" ] && kill -0 "$(cat "$STATE/pids/kube-apiserver")" 2>/dev/null; then
  die "a local cluster is already running in $STATE: run tests/cluster/down.sh first"
fi
t0=$(date +%s.%N)
rm -rf "$STATE"
mkdir -p "$STATE"/{pids,logs,pki,etcd,kubelet,pod-logs,images,cni/net.d,containerd}
chmod 700 "$STATE"
# Host paths outside $STATE that the node may create: recorded now if absent, removed by down.sh.
for p in /var/log/containers /etc/cni /opt/cni; do
  [ -e "$p" ] || echo "$p" >> "$STATE/created"
done

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

start() { # name logfile cmd...
  local name=$1; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/pids/$name"
}
wait_for() { # description seconds command...
  local what=$1 secs=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "$what not ready after ${secs}s (logs in $STATE/logs)"
    sleep 0.2
  done
}

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
  cert apiserver "/CN=kube-apiserver" "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1"
  cert admin "/O=system:masters/CN=dso-admin"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
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
kubeconfig "$KUBECONFIG_OUT" admin
kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
kubeconfig "$STATE/scheduler.kubeconfig" scheduler
kubeconfig "$STATE/kubelet.kubeconfig" kubelet

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
cat > "$STATE/cni/net.d/10-loopback.conflist" <<'CNI'
{"cniVersion": "1.0.0", "name": "dso-loopback", "plugins": [{"type": "loopback"}]}
CNI
start containerd containerd --config "$STATE/containerd/config.toml"

log "kube-apiserver $K8S_VERSION"
start kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
  --secure-port "$API_PORT" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --api-audiences https://kubernetes.default.svc,sts.amazonaws.com \
  --service-cluster-ip-range 10.0.0.0/24 --authorization-mode Node,RBAC --allow-privileged=true \
  --enable-admission-plugins NodeRestriction --endpoint-reconciler-type none \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP,Hostname \
  --profiling=false --v=1

# Images for the node, built offline from static binaries: the sandbox and a busybox shell.
python3 "$here/mkimage.py" -t dso.local/pause:1 -o "$STATE/images/pause.tar" \
  --file "$STATE/images/pause:/pause:755" --entrypoint /pause --user 65535:65535
python3 "$here/mkimage.py" -t dso.local/busybox:1 -o "$STATE/images/busybox.tar" \
  --file /bin/busybox:/bin/busybox:755 --dir /tmp:1777 --cmd /bin/sh \
  $(/bin/busybox --list | grep -vx busybox | sed 's|.*|--link /bin/&:busybox|')
wait_for containerd 30 ctr_ version
for img in pause busybox; do ctr_ images import --no-unpack "$STATE/images/$img.tar" >/dev/null; done
for extra in "${DSO_NODE_IMAGES[@]:-}"; do
  [ -n "$extra" ] && ctr_ images import "$extra" >/dev/null
done

export KUBECONFIG="$KUBECONFIG_OUT"
wait_for kube-apiserver 60 "$BIN/kubectl" get --raw /readyz
log "kube-apiserver ready"

start kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig "$STATE/controller-manager.kubeconfig" --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$CM_PORT" --controllers '*' --leader-elect=false \
  --use-service-account-credentials=true --service-account-private-key-file "$pki/sa.key" \
  --root-ca-file "$pki/ca.crt" --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
  --service-cluster-ip-range 10.0.0.0/24 --v=1
start kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig "$STATE/scheduler.kubeconfig" --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
  --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false --v=1

cat > "$STATE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
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
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
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
YAML
log "kubelet"
start kubelet "$BIN/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
  --root-dir "$STATE/kubelet" --hostname-override "$NODE_NAME" --node-ip 127.0.0.1 --v=1

wait_for "node $NODE_NAME" 90 sh -c "\"$BIN/kubectl\" get node \"$NODE_NAME\" -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
wait_for "default ServiceAccount" 30 "$BIN/kubectl" -n default get serviceaccount default
t1=$(date +%s.%N)
log "node $NODE_NAME Ready in $(python3 -c "print(f'{$t1-$t0:.1f}')")s"
echo "export KUBECONFIG=$KUBECONFIG_OUT PATH=$BIN:\$PATH"
