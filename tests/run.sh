#!/usr/bin/env bash
# Runs every test of DSO: formatting and lints, unit tests, integration tests against moto
# over HTTP, and the end-to-end suite on a real local Kubernetes shaped like a kind node (pod
# network, kube-proxy, CoreDNS, all in its own network namespace; started and torn down here).
# Installs what it needs first (tests/cluster/deps.sh; cached in /var/cache/dso).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
. tests/cluster/common.sh
MOTO_PORT=${DSO_MOTO_PORT:-5055}
t_start=$SECONDS
step() { printf '\n==> [%s +%ss] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - t_start))" "$*"; }

step "dependencies (cached by version in $CACHE)"
tests/cluster/deps.sh
export PATH="$BIN:$PATH"
command -v cargo >/dev/null || die "cargo not found: install Rust (rustup.rs)"

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "dependency policy (deny.toml, cargo-deny $CARGO_DENY_VERSION): licenses, bans, sources; advisories"
cargo deny --offline check licenses bans sources
# Advisories need the RustSec database, which cargo-deny clones from GitHub: this machine has no
# route there, so the check runs here only where a copy exists, and on every push and daily in
# .github/workflows/dependencies.yml.
advisory_db=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/advisory-db-*/ 2>/dev/null | head -1)
if [ -n "$advisory_db" ]; then
  echo "advisories: RustSec database of $(git -C "$advisory_db" log -1 --format=%cs 2>/dev/null || echo '?') in $advisory_db"
  cargo deny --offline check advisories
else
  echo "advisories: NOT checked on this machine (no RustSec database; offline); .github/workflows/dependencies.yml checks them"
fi

step "GitHub workflows (actionlint $ACTIONLINT_VERSION, their scripts through shellcheck)"
command -v shellcheck >/dev/null || die "shellcheck not found: actionlint would skip the workflows' scripts (apt-get install shellcheck)"
actionlint -color .github/workflows/*.yml

step "Helm chart: helm lint --strict and kubeconform ($K8S_VERSION schemas, the CRD's) of every documented values combination"
tests/chart.sh

cleanup() {
  set +e
  [ -f "$STATE/pids/kube-apiserver" ] && tests/cluster/down.sh >/dev/null 2>&1
  tests/moto.sh stop "$MOTO_PORT"
}
trap cleanup EXIT
step "moto server (AWS emulator) on 127.0.0.1:$MOTO_PORT"
DSO_MOTO_ENDPOINT=$(tests/moto.sh start "$MOTO_PORT")
export DSO_MOTO_ENDPOINT

step "unit and integration tests (moto over HTTP)"
cargo test --workspace --locked --exclude dso-e2e

step "fuzzing: the webhook's review-to-patch path, DsoSecret validation, dso-init's plan parser (${DSO_FUZZ_SECONDS:-40} s each, fuzz/README.md)"
tests/fuzz.sh "${DSO_FUZZ_SECONDS:-40}"

step "static binaries and images (init-image/recipe.env), compared with init-image/Dockerfile"
DSO_BIN_DIR=$(tests/images.sh)
export DSO_BIN_DIR
python3 tests/check-image-recipe.py "$DSO_BIN_DIR/images"

step "local Kubernetes $K8S_VERSION"
[ -d "$STATE" ] && tests/cluster/down.sh
tests/cluster/up.sh
tests/images.sh --import >/dev/null
export KUBECONFIG="$KUBECONFIG_OUT" DSO_POD_LOGS_DIR="$STATE/pod-logs"
export DSO_INIT_IMAGE=dso.local/dso-init:dev DSO_BUSYBOX_IMAGE=dso.local/busybox:1
kubectl version

step "the chart on the API server: every values combination (server dry-run), the CRD upgrade path"
tests/chart.sh --server
tests/crd-upgrade.sh

step "end-to-end suite (run inside the cluster's network namespace $NETNS)"
# The suite runs where the node runs, as a kind user's tools would on the node: the API server at
# 127.0.0.1:$API_PORT, moto at 127.0.0.1:$MOTO_NS_PORT, and webhooks it starts as processes on
# 127.0.0.1 reachable by the API server. Pods reach moto by name.
cargo test -p dso-e2e --locked --no-run
DSO_MOTO_ENDPOINT="http://127.0.0.1:$MOTO_NS_PORT" DSO_POD_AWS_ENDPOINT="$MOTO_POD_ENDPOINT" \
  DSO_NETNS="$NETNS" DSO_CLUSTER_DIR="$STATE" in_ns cargo test -p dso-e2e --locked --no-fail-fast

step "teardown leaves nothing behind"
tests/cluster/verify-teardown.sh
step "a component that cannot start: up.sh fails naming it, and teardown is still complete"
tests/cluster/fault-test.sh
step "all tests passed in $((SECONDS - t_start))s"
