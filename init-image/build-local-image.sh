#!/usr/bin/env bash
# Builds the static dso-init binary and packs it, offline, into the image
# dso.local/dso-init:dev (docker-archive, for `ctr images import`), FROM-scratch style:
# the binary at /dso-init, the CA bundle for TLS to AWS, user 65532:65532, no shell.
#
#   init-image/build-local-image.sh OUTPUT.tar [TAG]
#
# Prints the path of the static binary it packed. Needs no Docker engine.
set -euo pipefail
out=${1:?usage: $0 OUTPUT.tar [TAG]}
tag=${2:-dso.local/dso-init:dev}
root=$(cd "$(dirname "$0")/.." && pwd)
target=x86_64-unknown-linux-gnu
cd "$root"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --locked --target "$target" -p dso-init
bin="$root/target/$target/release/dso-init"
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "$bin is dynamically linked; expected a static binary" >&2; exit 1
fi
ca=/etc/ssl/certs/ca-certificates.crt
[ -r "$ca" ] || { echo "$ca is missing: apt-get install ca-certificates" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
python3 "$root/tests/cluster/mkimage.py" -t "$tag" -o "$out" \
  --file "$bin:/dso-init:755" \
  --file "$ca:/etc/ssl/certs/ca-certificates.crt:644" \
  --entrypoint /dso-init --user 65532:65532 --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
echo "$bin"
