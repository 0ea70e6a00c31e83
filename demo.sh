#!/usr/bin/env bash
# Shows DSO working end to end on this machine: a real single-node Kubernetes shaped like a kind
# node (built from upstream components, cached in /var/cache/dso; pod network, Services, DNS, all
# in its own network namespace), moto as AWS Secrets Manager inside it, DSO's
# images built from this tree, the Helm chart installed, and an app that reads its secret from a
# file, then gets the new value after a rotation in "AWS".
#   ./demo.sh        start and show;   ./demo.sh down   stop and clean up
set -euo pipefail
cd "$(dirname "$0")"
. tests/cluster/common.sh
# moto runs inside the cluster (pods reach it as moto.aws.svc.cluster.local); the host reaches
# it through the cluster's forward.
MOTO="http://127.0.0.1:$MOTO_HOST_PORT"
RELEASE=dso RELEASE_NS=dso-system APP_NS=shop SECRET_ID=demo/shop/db
if [ "${1:-}" = down ]; then tests/cluster/down.sh; exit 0; fi
t0=$SECONDS
step() { printf '\n==> [+%ss] %s\n' "$((SECONDS - t0))" "$*"; }
say() { printf '    %s\n' "$*"; }
# The AWS CLI against moto (any credentials do).
aws_() {
  AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \
    aws --endpoint-url "$MOTO" secretsmanager "$@"
}
# The app's output (kubectl logs). Waits until the app has printed its line.
app_line() { # pod
  local out
  for _ in $(seq 1 150); do
    out=$(kubectl -n "$APP_NS" logs "$1" -c app 2>/dev/null | tail -n 1)
    if [ -n "$out" ]; then echo "$out"; return 0; fi
    sleep 0.2
  done
  echo "(no output from pod $1: kubectl -n $APP_NS describe pod $1)" >&2; return 1
}
newest_pod() {
  kubectl -n "$APP_NS" get pods -l app=web --sort-by=.metadata.creationTimestamp \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}' | awk 'NF == 1 {print $1}' | tail -n 1
}
random_password() { printf 'demo-%s' "$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"; }

step "1/8 dependencies (first run builds Kubernetes $K8S_VERSION and CoreDNS: ~15 minutes)"
tests/cluster/deps.sh
export PATH="$BIN:$PATH"

step "2/8 local cluster"
if [ -f "$STATE/pids/kube-apiserver" ] && kill -0 "$(cat "$STATE/pids/kube-apiserver")" 2>/dev/null; then
  say "already running"
else
  tests/cluster/up.sh
fi
export KUBECONFIG="$KUBECONFIG_OUT"

step "3/8 moto (AWS emulator): $MOTO_POD_ENDPOINT for pods, $MOTO from here"
curl -fs -o /dev/null "$MOTO/moto-api/" || { echo "moto does not answer on $MOTO" >&2; exit 1; }

step "4/8 DSO images: static release builds of dso-webhook, dso-operator, dso-init (first run: a few minutes)"
tests/images.sh --import >/dev/null

step "5/8 helm install $RELEASE charts/dso (values: charts/dso/values-local.yaml)"
kubectl create namespace "$APP_NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# The local values' webhook handles only namespaces labelled for injection.
kubectl label namespace "$APP_NS" dso.dev/injection=enabled --overwrite >/dev/null
helm upgrade --install "$RELEASE" charts/dso -n "$RELEASE_NS" --create-namespace \
  -f charts/dso/values-local.yaml --wait --timeout 180s >/dev/null
kubectl -n "$RELEASE_NS" get deployments

step "6/8 a secret in AWS Secrets Manager (moto): $SECRET_ID"
pw1=$(random_password)
value="{\"username\":\"shop\",\"password\":\"$pw1\"}"
if aws_ describe-secret --secret-id "$SECRET_ID" >/dev/null 2>&1; then
  aws_ put-secret-value --secret-id "$SECRET_ID" --secret-string "$value" >/dev/null
  say "aws secretsmanager put-secret-value --secret-id $SECRET_ID --secret-string '$value'"
else
  aws_ create-secret --name "$SECRET_ID" --secret-string "$value" >/dev/null
  say "aws secretsmanager create-secret --name $SECRET_ID --secret-string '$value'"
fi

step "7/8 kubectl apply -f examples/ (a DsoSecret, and a Deployment that uses it)"
rerun=$(kubectl -n "$APP_NS" get deployment web -o name 2>/dev/null || true)
kubectl apply -f examples/dsosecret.yaml -f examples/deployment.yaml
# A re-run starts from the value just written: restart the app it left running.
[ -z "$rerun" ] || kubectl -n "$APP_NS" rollout restart deployment/web >/dev/null
kubectl -n "$APP_NS" wait dsosecret/db --for=condition=Ready --timeout=60s >/dev/null
kubectl -n "$APP_NS" rollout status deployment/web --timeout=120s
kubectl -n "$APP_NS" get dsosecrets
pod=$(newest_pod)
say "pod $pod has init container: $(kubectl -n "$APP_NS" get pod "$pod" -o jsonpath='{.spec.initContainers[0].name}'), volume medium: $(kubectl -n "$APP_NS" get pod "$pod" -o jsonpath='{.spec.volumes[?(@.name=="dso-secrets")].emptyDir.medium}')"
line=$(app_line "$pod")
say "the app in $pod prints:"
say "  $line"
say "times the value appears in the pod spec: $(kubectl -n "$APP_NS" get pod "$pod" -o yaml | grep -c "$pw1" || true), in the DsoSecret: $(kubectl -n "$APP_NS" get dsosecret db -o yaml | grep -c "$pw1" || true)"

step "8/8 rotate the secret in AWS; the operator rolls the Deployment"
pw2=$(random_password)
gen=$(kubectl -n "$APP_NS" get deployment web -o jsonpath='{.metadata.generation}')
aws_ put-secret-value --secret-id "$SECRET_ID" --secret-string "{\"username\":\"shop\",\"password\":\"$pw2\"}" >/dev/null
say "aws secretsmanager put-secret-value --secret-id $SECRET_ID  (new password: $pw2)"
# The operator notices within the DsoSecret's refresh interval (30s); this annotation asks now.
kubectl -n "$APP_NS" annotate dsosecret db "dso.dev/refresh=$(date +%s)" --overwrite >/dev/null
for _ in $(seq 1 450); do
  [ "$(kubectl -n "$APP_NS" get deployment web -o jsonpath='{.metadata.generation}')" -gt "$gen" ] && break
  sleep 0.2
done
kubectl -n "$APP_NS" rollout status deployment/web --timeout=120s
kubectl -n "$APP_NS" get replicasets -l app=web
kubectl -n "$APP_NS" get dsosecret db -o jsonpath='    lastRotation: {.status.lastRotation.at} {.status.lastRotation.workloads}{"\n"}'
pod=$(newest_pod)
line=$(app_line "$pod")
say "the app in the new pod $pod prints:"
say "  $line"

cat <<TXT

DSO works here: done in $((SECONDS - t0))s. Try next:
  export KUBECONFIG=$KUBECONFIG_OUT PATH=$BIN:\$PATH
  kubectl -n $APP_NS describe dsosecret db          # conditions, versions, events
  kubectl -n $APP_NS get pod -l app=web -o yaml     # the injected init container and tmpfs: no value
  kubectl explain dsosecret.spec.files
  helm -n $RELEASE_NS status $RELEASE                  # what the chart installed, and what to do next
  kubectl -n $APP_NS logs deploy/web -c dso-init    # what dso-init did (ids, never values)
  ./demo.sh down                                    # stop the cluster and remove everything it created
TXT
