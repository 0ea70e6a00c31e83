#!/usr/bin/env bash
# Builds DSO's binaries as static executables and packs each into a FROM-scratch-style image
# archive, offline (no Docker): dso.local/dso-init:dev, dso.local/dso-webhook:dev,
# dso.local/dso-operator:dev. With --import, loads them into the local node's containerd.
#   tests/images.sh [--import]      prints the directory holding the binaries and archives
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$repo/target}
triple=x86_64-unknown-linux-gnu
out="$target_dir/$triple/release"
tag=${DSO_IMAGE_TAG:-dev}
echo "[images] building static release binaries (dso-init, dso-webhook, dso-operator)" >&2
# glibc static (crt-static): this machine has no musl target; init-image/Dockerfile uses musl.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release --locked --target "$triple" \
  -p dso-init -p dso-webhook -p dso-operator --bin dso-init --bin dso-webhook --bin dso-operator >&2
mkdir -p "$out/images"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca_bundle" ] || { echo "[images] $ca_bundle is missing: apt-get install ca-certificates" >&2; exit 1; }
for b in dso-init dso-webhook dso-operator; do
  ldd "$out/$b" 2>&1 | grep -qE 'not a dynamic|statically linked' || { echo "[images] $b is not static" >&2; exit 1; }
  # The CA bundle: dso-init and the operator reach AWS over HTTPS (scratch images have none).
  python3 "$repo/tests/cluster/mkimage.py" -t "dso.local/$b:$tag" -o "$out/images/$b.tar" \
    --file "$out/$b:/$b:755" --file "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:644" \
    --entrypoint "/$b" --user 65532:65532
  echo "[images] dso.local/$b:$tag $(du -h "$out/$b" | cut -f1) binary" >&2
done
if [ "${1:-}" = --import ]; then
  . "$repo/tests/cluster/common.sh"
  for b in dso-init dso-webhook dso-operator; do ctr_ images import "$out/images/$b.tar" >/dev/null; done
  echo "[images] imported into the local node" >&2
fi
echo "$out"
