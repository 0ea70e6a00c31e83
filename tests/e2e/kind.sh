#!/usr/bin/env bash
# Runs DSO's end-to-end suite on a kind cluster, for machines with Docker: creates the cluster,
# builds DSO's images with Docker and loads them into the node, runs moto (the AWS emulator) as
# a pod behind the Service moto.aws — the name the local cluster gives it too — and runs the
# end-to-end tests that drive DSO inside the cluster (tests/e2e/tests/foundation.rs, init.rs,
# chart.rs). The chart test installs the chart with `helm install` and the same values as on
# the local cluster (charts/dso/values-local.yaml: two replicas each, the webhook behind its
# Service), runs the whole story through it (operator, webhook, dso-init, rotation) and
# uninstalls it. The webhook and
# operator tests of tests/run.sh run DSO as processes on the host and register the webhook at
# https://127.0.0.1, which kind's API server (inside a container) cannot reach: DSO_E2E_ARGS=""
# runs them anyway, e.g. on a kind with host networking of your own.
#
#   tests/e2e/kind.sh                  create, test, delete the cluster
#   DSO_KIND_KEEP=1 tests/e2e/kind.sh  keep the cluster afterwards (KUBECONFIG is printed)
#
# Needs docker, kind, kubectl, helm, cargo, curl. Run it as root (sudo -E): the suite reads
# container logs from the node's /var/log/pods, mounted on the host, whose files are 0640 root.
# Settings: DSO_KIND_CLUSTER (dso-e2e), DSO_KIND_NODE_IMAGE (kind's default), DSO_KIND_DIR
# (/tmp/dso-kind), DSO_MOTO_PORT (5055), DSO_E2E_ARGS (`cargo test` arguments; default
# "--test foundation --test init --test chart").
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
cluster=${DSO_KIND_CLUSTER:-dso-e2e}
dir=${DSO_KIND_DIR:-/tmp/dso-kind}
moto_port=${DSO_MOTO_PORT:-5055}
busybox=busybox:1.37
t0=$SECONDS
step() { printf '\n==> [kind +%ss] %s\n' "$((SECONDS - t0))" "$*"; }
die() { printf 'kind.sh: %s\n' "$*" >&2; exit 1; }

for c in docker kind kubectl helm cargo curl; do
  command -v "$c" >/dev/null || die "$c is missing"
done
[ "$(id -u)" = 0 ] || echo "kind.sh: not root: reading pod logs may fail (run with sudo -E)" >&2

cleanup() {
  if [ -z "${DSO_KIND_KEEP:-}" ]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  else
    echo "kept: export KUBECONFIG=$dir/kubeconfig"
  fi
}
trap cleanup EXIT

step "kind cluster $cluster"
rm -rf "$dir"
mkdir -p "$dir/pod-logs"
cat > "$dir/kind.yaml" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
    extraMounts:
      # The suite reads container logs here (DSO_POD_LOGS_DIR), as on the local cluster.
      - {hostPath: $dir/pod-logs, containerPath: /var/log/pods}
    extraPortMappings:
      # moto's NodePort: the suite reaches it on the host's 127.0.0.1; pods use its Service name.
      - {containerPort: 30555, hostPort: $moto_port, listenAddress: 127.0.0.1}
YAML
kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
kind create cluster --name "$cluster" --config "$dir/kind.yaml" --kubeconfig "$dir/kubeconfig" \
  ${DSO_KIND_NODE_IMAGE:+--image "$DSO_KIND_NODE_IMAGE"} --wait 120s
export KUBECONFIG="$dir/kubeconfig"
kubectl version

step "images (docker build) and kind load"
for b in dso-init dso-webhook dso-operator; do
  docker build -q -f init-image/Dockerfile --target "$b" -t "dso.local/$b:dev" .
done
docker pull -q "$busybox"
kind load docker-image --name "$cluster" dso.local/dso-init:dev dso.local/dso-webhook:dev \
  dso.local/dso-operator:dev "$busybox"

step "moto: Service moto.aws (port 5055, as on the local cluster), host port $moto_port"
kubectl create namespace aws
kubectl apply -n aws -f - <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: moto}
spec:
  replicas: 1
  selector: {matchLabels: {app: moto}}
  template:
    metadata: {labels: {app: moto}}
    spec:
      containers:
        - name: moto
          image: python:3.12-slim
          command: ["sh", "-c", "pip install --quiet 'moto[server]==5.2.1' && exec moto_server -H 0.0.0.0 -p 5055"]
          readinessProbe:
            httpGet: {path: /moto-api/, port: 5055}
            periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {name: moto}
spec:
  type: NodePort
  selector: {app: moto}
  ports: [{name: http, port: 5055, targetPort: 5055, nodePort: 30555}]
YAML
kubectl -n aws rollout status deploy/moto --timeout 300s
# The pod is Ready; the host port mapping may lag: a minute at most, 5 s a try.
tries=0
until curl -fs --max-time 5 -o /dev/null "http://127.0.0.1:$moto_port/moto-api/"; do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || die "moto is Ready but not reachable on 127.0.0.1:$moto_port after 60 tries"
  sleep 1
done

step "end-to-end suite"
export DSO_MOTO_ENDPOINT="http://127.0.0.1:$moto_port"
export DSO_POD_AWS_ENDPOINT="http://moto.aws.svc.cluster.local:5055"
export DSO_BIN_DIR="$repo/target/release"   # for the host-process tests, when asked for
export DSO_INIT_IMAGE=dso.local/dso-init:dev DSO_BUSYBOX_IMAGE="$busybox"
export DSO_POD_LOGS_DIR="$dir/pod-logs"
args=${DSO_E2E_ARGS---test foundation --test init --test chart}
if [ -z "$args" ]; then
  cargo build --release --locked -p dso-webhook -p dso-operator -p dso-init
fi
# shellcheck disable=SC2086 # a list of arguments
cargo test -p dso-e2e --locked $args
step "passed in $((SECONDS - t0))s"
