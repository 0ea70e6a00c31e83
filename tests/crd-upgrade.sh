#!/usr/bin/env bash
# Proves the CRD upgrade path charts/dso/README.md documents, on the cluster KUBECONFIG names:
# Helm installs a chart's crds/ once and never upgrades them; `kubectl apply --server-side
# --force-conflicts -f charts/dso/crds/` does.
#   1. Helm installs an "older release" whose CRD lacks a field (spec.refresh);
#   2. a DsoSecret using the field is refused (strict validation);
#   3. the documented command upgrades the CRD Helm owns; the DsoSecret is accepted;
#   4. `helm upgrade` with the older chart leaves the new CRD alone, `helm uninstall` keeps it.
# It deletes and recreates the DsoSecret CRD, so it refuses to run while any DsoSecret exists;
# it leaves the current CRD installed if one was, none otherwise.
# Needs helm, kubectl and python3 (PyYAML) on PATH.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
crd=dsosecrets.dso.dev
release=dso-crd-upgrade-test
ns=default
work=$(mktemp -d)
trap 'helm uninstall "$release" -n "$ns" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
say() { echo "[crd-upgrade] $*"; }
die() { echo "[crd-upgrade] FAILED: $*" >&2; exit 1; }

had_crd=false
if kubectl get crd "$crd" >/dev/null 2>&1; then
  had_crd=true
  [ -z "$(kubectl get dsosecrets -A -o name)" ] ||
    die "DsoSecrets exist on this cluster; this test deletes the CRD, run it on a test cluster"
fi
kubectl delete crd "$crd" --ignore-not-found --wait=true >/dev/null

say "an older release's chart: its CRD without spec.refresh, installed by Helm"
mkdir -p "$work/old/crds"
printf 'apiVersion: v2\nname: dso-old\nversion: 0.0.1\n' > "$work/old/Chart.yaml"
python3 - charts/dso/crds/dso.dev_dsosecrets.yaml "$work/old/crds/dso.dev_dsosecrets.yaml" <<'EOF'
import sys, yaml
crd = yaml.safe_load(open(sys.argv[1]))
for version in crd["spec"]["versions"]:
    del version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["refresh"]
yaml.safe_dump(crd, open(sys.argv[2], "w"))
EOF
helm install "$release" "$work/old" -n "$ns" >/dev/null
established() {
  kubectl wait --for condition=Established "crd/$crd" --timeout=60s >/dev/null 2>&1 || die "$crd is not Established"
}
established

has_refresh() {
  [ -n "$(kubectl get crd "$crd" -o jsonpath='{.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.refresh.type}')" ]
}
# examples/dsosecret.yaml uses spec.refresh; validated by the API server, not stored.
try_example() {
  sed '/^  namespace:/d' examples/dsosecret.yaml |
    kubectl apply --dry-run=server --validate=strict -n "$ns" -f - 2>&1
}
! has_refresh || die "the older CRD already has spec.refresh"
out=$(try_example) && die "a DsoSecret with spec.refresh was accepted by the older CRD: $out"
grep -q refresh <<<"$out" || die "refused for another reason than spec.refresh: $out"
say "the older CRD refuses spec.refresh: $out"

say "the documented upgrade: kubectl apply --server-side --force-conflicts -f charts/dso/crds/"
kubectl apply --server-side --force-conflicts -f charts/dso/crds/
established
has_refresh || die "the CRD was not upgraded"
out=$(try_example) || die "the upgraded CRD refuses the example: $out"
say "the upgraded CRD accepts it: $out"

say "helm upgrade (older chart) leaves the CRD alone; helm uninstall keeps it"
helm upgrade "$release" "$work/old" -n "$ns" >/dev/null
has_refresh || die "helm upgrade changed the CRD"
helm uninstall "$release" -n "$ns" >/dev/null
kubectl get crd "$crd" >/dev/null || die "helm uninstall removed the CRD"
has_refresh || die "the CRD changed on uninstall"
# Leave the cluster as found: the current CRD if there was one, else none.
$had_crd || kubectl delete crd "$crd" --wait=true >/dev/null
say "the CRD upgrade path works as documented"
