#!/usr/bin/env bash
# Checks the Helm chart the way the ecosystem's tools do, without a cluster:
#   - `helm lint --strict` of every values combination below;
#   - template tests: tests/chart-render-tests.py asserts what each value does to the render;
#   - kubeconform (strict: unknown fields fail) of the `helm template` render of each, against JSON
#     schemas of the pinned Kubernetes release's API (tests/cluster/versions.env), of the
#     DsoSecret CRD and of the Prometheus Operator's CRDs (ServiceMonitor, PodMonitor,
#     PrometheusRule, from its Go module); and of examples/ and the CRD files themselves;
#   - promtool: the PrometheusRule's rules are checked (`promtool check rules`) and its alerts
#     unit-tested (`promtool test rules tests/chart-alerts.test.yaml`).
# The schemas are generated offline (tests/kubeconform-schemas.py) from the OpenAPI document of
# the k8s.io/kubernetes module the local cluster is built from, so no schema is downloaded.
# Needs helm, kubeconform, promtool and go on PATH (tests/run.sh puts tests/cluster/deps.sh's tools there).
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
  "chart-generated certificate (webhook.tls.mode=helm)|--set webhook.tls.mode=helm"
  "runtime certificate valid one day|--set webhook.tls.mode=runtime --set webhook.tls.validity=24h"
  "cert-manager, self-signed Issuer|--set webhook.tls.certManager.enabled=true"
  "cert-manager by mode|--set webhook.tls.mode=certManager"
  "cert-manager, your ClusterIssuer|--set webhook.tls.certManager.enabled=true --set webhook.tls.certManager.issuerRef.name=corp-ca --set webhook.tls.certManager.issuerRef.kind=ClusterIssuer"
  "webhook by URL, one replica|--set webhook.url=https://dso-webhook.example.com:8443/mutate --set webhook.replicas=1 --set webhook.tls.extraDnsNames={dso-webhook.example.com}"
  "single replicas, no leader election|--set operator.replicas=1 --set operator.leaderElection.enabled=false --set webhook.replicas=1"
  "fail open, one namespace, ListSecrets sweep|--set webhook.failurePolicy=Ignore --set operator.watchNamespace=apps --set operator.awsLookup=sweep --set webhook.excludeNamespaces={legacy} --set webhook.namespaceSelector.matchLabels.dso\\.dev/injection=enabled"
  "webhook NetworkPolicy: control-plane CIDRs, monitoring namespace; default credentials allowed|--set webhook.networkPolicy.enabled=true --set webhook.networkPolicy.from[0].ipBlock.cidr=10.0.0.0/16 --set webhook.networkPolicy.from[1].ipBlock.cidr=10.1.0.0/16 --set webhook.networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=monitoring --set init.allowDefaultCredentials=true"
  "no operator fence (clusters before 1.30 policies, or your own)|--set operator.admissionPolicy.enabled=false"
  "secret allowlist per namespace|--set secretAllowlist.default[0]=shared/ --set secretAllowlist.namespaces.payments[0]=shared/payments-"
  "no dso:// policy for pods that do not opt in|--set webhook.envReferencePolicy.enabled=false"
  "host network (clusters without a pod network)|--set hostNetwork=true --set webhook.url=https://127.0.0.1:8443/mutate --set webhook.replicas=1"
  "monitoring: ServiceMonitor, PrometheusRule, Grafana dashboard ConfigMap|--set metrics.serviceMonitor.enabled=true --set metrics.serviceMonitor.labels.release=kube-prometheus-stack --set metrics.prometheusRule.enabled=true --set metrics.prometheusRule.additionalRuleLabels.team=platform --set metrics.dashboard.enabled=true --set metrics.dashboard.namespace=monitoring"
  "monitoring: PodMonitor, default scrape interval|--set metrics.podMonitor.enabled=true --set metrics.podMonitor.interval="
  "EKS with an overlay CNI: only the webhook on the host network, port 9443, one replica per node, spread over zones|--set webhook.hostNetwork=true --set webhook.port=9443 --set webhook.podAntiAffinity=hard --set operator.podAntiAffinity=hard --set webhook.topologySpreadConstraints[0].maxSkew=1 --set webhook.topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone --set webhook.topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway"
  "mirror registry, dso-init by digest, TLS-intercepting proxy CA, own resources and volumes|--set global.imageRegistry=mirror.example.com:5000/ghcr --set init.image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef --set init.caBundle.configMap=corp-proxy-ca --set init.env.HTTPS_PROXY=http://proxy:3128 --set webhook.resources.limits=null --set operator.resources.requests.ephemeral-storage=1Gi --set operator.extraVolumes[0].name=aws-config --set operator.extraVolumes[0].configMap.name=aws-config --set operator.extraVolumeMounts[0].name=aws-config --set operator.extraVolumeMounts[0].mountPath=/home/nonroot/.aws"
  "existing ServiceAccounts, OpenShift restricted-v2 (no fixed IDs)|--set operator.serviceAccount.create=false --set operator.serviceAccount.name=dso-irsa --set webhook.serviceAccount.create=false --set webhook.serviceAccount.name=dso-webhook-sa --set operator.podSecurityContext.runAsUser=null --set operator.podSecurityContext.runAsGroup=null --set operator.podSecurityContext.fsGroup=null --set webhook.podSecurityContext.runAsUser=null --set webhook.podSecurityContext.runAsGroup=null --set webhook.podSecurityContext.fsGroup=null"
)
# cert-manager's own kinds: their schemas come with cert-manager, not with Kubernetes.
skip=cert-manager.io/v1/Certificate,cert-manager.io/v1/Issuer

render() { helm template dso charts/dso -n "$1" --kube-version "$kube_version" "${@:2}"; }

if [ "${1:-}" = --server ]; then
  ns=dso-chart-dry-run
  # A previous run's namespaces may still be terminating: creating in them fails.
  kubectl wait --for=delete namespace/$ns namespace/apps namespace/monitoring --timeout=120s >/dev/null 2>&1 || true
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # Namespaces combinations name: operator.watchNamespace (its Role goes there) and
  # metrics.dashboard.namespace (the dashboard's ConfigMap).
  created=()
  for other in apps monitoring; do
    if ! kubectl get namespace "$other" >/dev/null 2>&1; then
      kubectl create namespace "$other" >/dev/null && created+=("$other")
    fi
  done
  failed=0
  for entry in "${combinations[@]}"; do
    name=${entry%%|*}
    read -r -a args <<<"${entry#*|}"
    echo "[chart] $name: kubectl apply --dry-run=server (cert-manager and Prometheus Operator kinds left out: their CRDs are not here; kubeconform checks them offline)"
    render "$ns" "${args[@]}" |
      python3 -c 'import sys, yaml; yaml.safe_dump_all([d for d in yaml.safe_load_all(sys.stdin) if d and not d["apiVersion"].startswith(("cert-manager.io/", "monitoring.coreos.com/"))], sys.stdout)' |
      kubectl apply --dry-run=server --validate=strict -f - >"$work/out" 2>&1 || { cat "$work/out" >&2; failed=1; }
  done
  kubectl delete namespace "$ns" --wait=false >/dev/null
  for other in "${created[@]}"; do kubectl delete namespace "$other" --wait=false >/dev/null; done
  [ "$failed" = 0 ] || { echo "[chart] FAILED (see above)" >&2; exit 1; }
  echo "[chart] the API server accepts every combination"
  exit 0
fi

swagger="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/api/openapi-spec/swagger.json"
[ -s "$swagger" ] || { echo "[chart] no OpenAPI document at $swagger" >&2; exit 1; }
monitoring_crds="$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/example/prometheus-operator-crd"
crd_args=(--crd crds/dso.dev_dsosecrets.yaml)
for kind in servicemonitors podmonitors prometheusrules; do
  [ -s "$monitoring_crds/monitoring.coreos.com_$kind.yaml" ] || { echo "[chart] no $kind CRD in $monitoring_crds" >&2; exit 1; }
  crd_args+=(--crd "$monitoring_crds/monitoring.coreos.com_$kind.yaml")
done
python3 tests/kubeconform-schemas.py "$work/schemas" --openapi "$swagger" "${crd_args[@]}"
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
# GitOps (Argo CD, Flux, `helm template | kubectl apply`): in the default runtime TLS mode two
# renders are byte for byte the same, so a sync never sees a change it did not make.
echo "[chart] runtime TLS: two renders are identical"
render dso-system > "$work/first.yaml" && render dso-system > "$work/second.yaml" || failed=1
if ! diff -u "$work/first.yaml" "$work/second.yaml" >&2; then
  echo "[chart] the default render differs between two runs: not GitOps-safe" >&2; failed=1
fi
echo "[chart] alerts: promtool check rules, promtool test rules (tests/chart-alerts.test.yaml)"
render dso-system --set metrics.prometheusRule.enabled=true |
  python3 -c 'import sys, yaml; [r] = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] == "PrometheusRule"]; yaml.safe_dump(r["spec"], sys.stdout)' \
  > "$work/dso-rules.yaml"
cp tests/chart-alerts.test.yaml "$work/"
promtool check rules "$work/dso-rules.yaml" || failed=1
promtool test rules "$work/chart-alerts.test.yaml" || failed=1
echo "[chart] template tests"
python3 tests/chart-render-tests.py "$kube_version" || failed=1
echo "[chart] examples/ and the CRD files"
"${kubeconform[@]}" examples/ crds/ charts/dso/crds/ || failed=1
[ "$failed" = 0 ] || { echo "[chart] FAILED (see above)" >&2; exit 1; }
echo "[chart] every combination lints and validates"
