#!/usr/bin/env bash
# Brings DSO up on this machine: a real single-node Kubernetes on 127.0.0.1 (built from
# upstream components, cached in /var/cache/dso), the DsoSecret CRD, and the example DsoSecret.
#   ./demo.sh        start and show;   ./demo.sh down   stop and clean up
set -euo pipefail
cd "$(dirname "$0")"
. tests/cluster/common.sh
if [ "${1:-}" = down ]; then tests/cluster/down.sh; tests/moto.sh stop 5055; exit 0; fi
step() { printf '\n==> %s\n' "$*"; }
step "1/4 installing dependencies (first run builds Kubernetes $K8S_VERSION: ~10 minutes)"
tests/cluster/deps.sh
export PATH="$BIN:$PATH"
step "2/4 starting the local cluster"
if [ -f "$STATE/pids/kube-apiserver" ] && kill -0 "$(cat "$STATE/pids/kube-apiserver")" 2>/dev/null; then
  echo "already running"
else
  tests/cluster/up.sh
fi
export KUBECONFIG="$KUBECONFIG_OUT"
step "3/4 installing the DsoSecret CRD"
kubectl apply --server-side -f crds/dso.dev_dsosecrets.yaml
kubectl wait --for=condition=Established --timeout=30s crd/dsosecrets.dso.dev
step "4/4 applying examples/dsosecret.yaml"
kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f examples/dsosecret.yaml
kubectl get dsosecrets -n shop
cat <<TXT

DSO's API is up. Try:
  export KUBECONFIG=$KUBECONFIG_OUT PATH=$BIN:\$PATH
  kubectl explain dsosecret.spec.files
  kubectl get dsosecrets -A
  ./demo.sh down          # stop the cluster and remove everything it created
TXT
