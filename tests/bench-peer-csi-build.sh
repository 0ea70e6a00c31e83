#!/usr/bin/env bash
# Builds the peer of the InPlace cost benchmark (tests/bench-inplace.sh --peer csi): the Secrets
# Store CSI driver, its AWS provider and the CSI node-driver-registrar, as host binaries, from
# their upstream sources at release tags. Prints the directory holding them:
#   /var/cache/dso/peer-csi-<driver tag>-<provider version>-<registrar tag>/
#     secrets-store-csi  provider-aws  csi-node-driver-registrar  crds/
# (crds/: the driver's SecretProviderClass and SecretProviderClassPodStatus CRDs, as its tag
# ships them, applied by the benchmark.) Nothing of the peer is kept in this repository.
#
# Sources: bare git repositories, by default the fetch mirror of this environment
# (/work/.mirror/<owner>+<name>/repo, filled by the `fetch` tool: the Go module proxy does
# not serve these modules); any clone works. Dependencies come from the Go module proxy.
#   tests/bench-peer-csi-build.sh
#   DSO_PEER_CSI_DRIVER_GIT=~/src/secrets-store-csi-driver/.git tests/bench-peer-csi-build.sh
# Variables: DSO_PEER_CSI_{DRIVER,PROVIDER,REGISTRAR}_GIT (git dirs) and _TAG (tags).
set -euo pipefail
mirror=${DSO_PEER_MIRROR:-/work/.mirror}
driver_git=${DSO_PEER_CSI_DRIVER_GIT:-$mirror/kubernetes-sigs+secrets-store-csi-driver/repo}
provider_git=${DSO_PEER_CSI_PROVIDER_GIT:-$mirror/aws+secrets-store-csi-driver-provider-aws/repo}
registrar_git=${DSO_PEER_CSI_REGISTRAR_GIT:-$mirror/kubernetes-csi+node-driver-registrar/repo}
# The driver needs monis.app/mlog, which the Go module proxy refuses (403): its source is
# github.com/enj/mlog (fetch mirror too), served to `go` from a local file proxy; `go` checks
# it against the driver's go.sum like any download.
mlog_git=${DSO_PEER_CSI_MLOG_GIT:-$mirror/enj+mlog/repo}
driver_tag=${DSO_PEER_CSI_DRIVER_TAG:-v1.6.0}
provider_tag=${DSO_PEER_CSI_PROVIDER_TAG:-secrets-store-csi-driver-provider-aws-2.1.1}
registrar_tag=${DSO_PEER_CSI_REGISTRAR_TAG:-v2.17.0}
out=${DSO_CACHE:-/var/cache/dso}/peer-csi-$driver_tag-${provider_tag##*-}-$registrar_tag
if [ -x "$out/secrets-store-csi" ] && [ -x "$out/provider-aws" ] \
  && [ -x "$out/csi-node-driver-registrar" ] && [ -f "$out/crds/spc.yaml" ]; then
  echo "$out"; exit 0
fi
command -v go >/dev/null || { echo "bench-peer-csi-build: go is missing" >&2; exit 1; }

src=$(mktemp -d /tmp/dso-peer-csi-src.XXXXXX)
trap 'rm -rf "$src"' EXIT
# A tag's tree into a directory. The mirror may lack some large blobs (an animated gif in the
# driver's repository): those files are left out, and said so, rather than failing the export.
export_tree() { # git-dir tag dest
  local idx="$src/index" dest="$src/$3"
  mkdir -p "$dest"
  git --git-dir="$1" rev-parse -q --verify "$2^{commit}" >/dev/null \
    || { echo "bench-peer-csi-build: $1 has no tag $2" >&2; exit 1; }
  GIT_INDEX_FILE=$idx git --git-dir="$1" read-tree "$2"
  git --git-dir="$1" ls-tree -r "$2" | while read -r _ _ obj path; do
    git --git-dir="$1" cat-file -e "$obj" 2>/dev/null || printf '%s\n' "$path"
  done > "$idx.absent"
  if [ -s "$idx.absent" ]; then
    echo "bench-peer-csi-build: absent from $1, left out: $(tr '\n' ' ' < "$idx.absent")" >&2
    GIT_INDEX_FILE=$idx git --git-dir="$1" --work-tree="$dest" rm -q --cached --pathspec-from-file="$idx.absent"
  fi
  GIT_INDEX_FILE=$idx git --git-dir="$1" --work-tree="$dest" checkout-index -a --prefix="$dest/"
  rm -f "$idx" "$idx.absent"
}
export_tree "$driver_git" "$driver_tag" driver
export_tree "$provider_git" "$provider_tag" provider
export_tree "$registrar_git" "$registrar_tag" registrar

# A module zip (files under <module>@<version>/) for each module the proxy does not serve.
local_module() { # git-dir module version
  local dir="$src/goproxy/$2/@v" files="$src/modfiles"
  mkdir -p "$dir" "$files"
  git --git-dir="$1" archive --prefix="$2@$3/" "$3" | tar x -C "$files"
  (cd "$files" && find "$2@$3" -type f | zip -q "$dir/$3.zip" -@)
  git --git-dir="$1" show "$3:go.mod" > "$dir/$3.mod"
  printf '{"Version":"%s","Time":"%s"}\n' "$3" "$(git --git-dir="$1" log -1 --format=%cI "$3")" > "$dir/$3.info"
  printf '%s\n' "$3" >> "$dir/list"
}
local_module "$mlog_git" monis.app/mlog "$(awk '$1 == "monis.app/mlog" {print $2; exit}' "$src/driver/go.mod")"
export GOPROXY="file://$src/goproxy,${GOPROXY:-https://proxy.golang.org}"

mkdir -p "$out.tmp/crds"
build() { # dir package output [ldflags]
  echo "bench-peer-csi-build: go build $2 in $1" >&2
  (cd "$src/$1" && CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "${4:-}" -o "$out.tmp/$3" "$2")
}
build driver ./cmd/secrets-store-csi-driver secrets-store-csi \
  "-X sigs.k8s.io/secrets-store-csi-driver/pkg/version.BuildVersion=$driver_tag -X sigs.k8s.io/secrets-store-csi-driver/pkg/version.Vcs=$(git --git-dir="$driver_git" rev-parse "$driver_tag^{commit}")"
build provider . provider-aws
# The registrar vendors its dependencies; a vendor directory the Go version disagrees with
# falls back to the module proxy.
build registrar ./cmd/csi-node-driver-registrar csi-node-driver-registrar "-X main.version=$registrar_tag" \
  || GOFLAGS=-mod=mod build registrar ./cmd/csi-node-driver-registrar csi-node-driver-registrar "-X main.version=$registrar_tag"
cp "$src/driver/deploy/secrets-store.csi.x-k8s.io_secretproviderclasses.yaml" "$out.tmp/crds/spc.yaml"
cp "$src/driver/deploy/secrets-store.csi.x-k8s.io_secretproviderclasspodstatuses.yaml" "$out.tmp/crds/spcps.yaml"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
