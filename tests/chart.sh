#!/usr/bin/env bash
# Checks the Helm chart the way the ecosystem's tools do, without a cluster:
#   - `helm lint --strict` of every values combination below;
#   - template tests: tests/chart-render-tests.py asserts what each value does to the render;
#   - kubeconform (strict: unknown fields fail) of the `helm template` render of each, against JSON
#     schemas of the pinned Kubernetes release's API (tests/cluster/versions.env) and of the
#     DsoSecret CRD; and of examples/ and the CRD files themselves.
# The schemas are generated offline (tests/kubeconform-schemas.py) from the OpenAPI document of
# the k8s.io/kubernetes module the local cluster is built from, so no schema is downloaded.
# Needs helm, kubeconform and go on PATH (tests/run.sh puts tests/cluster/deps.sh's tools there).
#
#   tests/chart.sh            the checks above, no cluster
#   tests/chart.sh --server   instead: each render through `kubectl apply --dry-run=server
#                             --validate=strict` on the cluster KUBECONFIG names (the API server's
#                             own validation, defaulting and admission; nothing is stored)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
# shellcheck source=cluster/versions.env
. tests/cluster/versions.env
kube_version=${K8S_VERSION#v}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Every documented way to install the chart: a name, then the helm arguments.
combinations=(
  "defaults|"
  "local cluster (values-local.yaml)|-f charts/dso/values-local.yaml"
  "EKS with IRSA (docs/install-eks.md)|--set aws.region=us-east-1 --set operator.serviceAccount.roleArn=arn:aws:iam::123456789012:role/dso-operator"
  "cert-manager, self-signed Issuer|--set webhook.tls.certManager.enabled=true"
  "cert-manager, your ClusterIssuer|--set webhook.tls.certManager.enabled=true --set webhook.tls.certManager.issuerRef.name=corp-ca --set webhook.tls.certManager.issuerRef.kind=ClusterIssuer"
  "webhook by URL, one replica|--set webhook.url=https://dso-webhook.example.com:8443/mutate --set webhook.replicas=1 --set webhook.tls.extraDnsNames={dso-webhook.example.com}"
  "single replicas, no leader election|--set operator.replicas=1 --set operator.leaderElection.enabled=false --set webhook.replicas=1"
  "fail open, one namespace, ListSecrets sweep|--set webhook.failurePolicy=Ignore --set operator.watchNamespace=apps --set operator.awsLookup=sweep --set webhook.excludeNamespaces={legacy} --set webhook.namespaceSelector.matchLabels.dso\\.dev/injection=enabled"
  "webhook NetworkPolicy: control-plane CIDRs, monitoring namespace; default credentials allowed|--set webhook.networkPolicy.enabled=true --set webhook.networkPolicy.from[0].ipBlock.cidr=10.0.0.0/16 --set webhook.networkPolicy.from[1].ipBlock.cidr=10.1.0.0/16 --set webhook.networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring --set init.allowDefaultCredentials=true"
  "no operator fence (clusters before 1.30 policies, or your own)|--set operator.admissionPolicy.enabled=false"
  "no dso:// policy for pods that do not opt in|--set webhook.envReferencePolicy.enabled=false"
  "host network (clusters without a pod network)|--set hostNetwork=true --set webhook.url=https://127.0.0.1:8443/mutate --set webhook.replicas=1"
  "existing ServiceAccounts, OpenShift restricted-v2 (no fixed IDs)|--set operator.serviceAccount.create=false --set operator.serviceAccount.name=dso-irsa --set webhook.serviceAccount.create=false --set webhook.serviceAccount.name=dso-webhook-sa --set operator.podSecurityContext.runAsUser=null --set operator.podSecurityContext.runAsGroup=null --set operator.podSecurityContext.fsGroup=null --set webhook.podSecurityContext.runAsUser=null --set webhook.podSecurityContext.runAsGroup=null --set webhook.podSecurityContext.fsGroup=null"
)
# cert-manager's own kinds: their schemas come with cert-manager, not with Kubernetes.
skip=cert-manager.io/v1/Certificate,cert-manager.io/v1/Issuer

render() { helm template dso charts/dso -n "$1" --kube-version "$kube_version" "${@:2}"; }

if [ "${1:-}" = --server ]; then
  ns=dso-chart-dry-run
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # The namespace a combination's operator.watchNamespace names: its Role goes there.
  watched=apps created_watched=
  if ! kubectl get namespace "$watched" >/dev/null 2>&1; then
    kubectl create namespace "$watched" >/dev/null && created_watched=1
  fi
  failed=0
  for entry in "${combinations[@]}"; do
    name=${entry%%|*}
    read -r -a args <<<"${entry#*|}"
    echo "[chart] $name: kubectl apply --dry-run=server (cert-manager kinds left out: no cert-manager here)"
    render "$ns" "${args[@]}" |
      python3 -c 'import sys, yaml; yaml.safe_dump_all([d for d in yaml.safe_load_all(sys.stdin) if d and not d["apiVersion"].startswith("cert-manager.io/")], sys.stdout)' |
      kubectl apply --dry-run=server --validate=strict -f - >"$work/out" 2>&1 || { cat "$work/out" >&2; failed=1; }
  done
  kubectl delete namespace "$ns" --wait=false >/dev/null
  [ -z "$created_watched" ] || kubectl delete namespace "$watched" --wait=false >/dev/null
  [ "$failed" = 0 ] || { echo "[chart] FAILED (see above)" >&2; exit 1; }
  echo "[chart] the API server accepts every combination"
  exit 0
fi

swagger="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/api/openapi-spec/swagger.json"
[ -s "$swagger" ] || { echo "[chart] no OpenAPI document at $swagger" >&2; exit 1; }
python3 tests/kubeconform-schemas.py "$work/schemas" --openapi "$swagger" --crd crds/dso.dev_dsosecrets.yaml
kubeconform=(kubeconform -strict -summary -kubernetes-version "$kube_version" -skip "$skip"
  -schema-location "$work/schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json")

failed=0
for entry in "${combinations[@]}"; do
  name=${entry%%|*}
  read -r -a args <<<"${entry#*|}"
  echo "[chart] $name: helm lint --strict, kubeconform of the render (Kubernetes $kube_version)"
  if ! out=$(helm lint --strict charts/dso "${args[@]}" 2>&1); then
    echo "$out" >&2; failed=1; continue
  fi
  if ! render dso-system "${args[@]}" > "$work/render.yaml"; then
    failed=1; continue
  fi
  "${kubeconform[@]}" "$work/render.yaml" || failed=1
done
echo "[chart] template tests"
python3 tests/chart-render-tests.py "$kube_version" || failed=1
echo "[chart] examples/ and the CRD files"
"${kubeconform[@]}" examples/ crds/ charts/dso/crds/ || failed=1
[ "$failed" = 0 ] || { echo "[chart] FAILED (see above)" >&2; exit 1; }
echo "[chart] every combination lints and validates"
