#!/usr/bin/env bash
# Builds DSO's three images offline (no Docker), by the one recipe in init-image/recipe.env —
# the recipe init-image/Dockerfile states for releases: static binaries on an empty base, the CA
# bundle, user 65532, nothing else. Images: dso.local/<binary>:$DSO_IMAGE_TAG (default dev), as
# docker-archive files; with --import, loaded into the local node's containerd.
#   tests/images.sh [--import]      prints the directory holding the binaries (images/ below it)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../init-image/recipe.env
. "$repo/init-image/recipe.env"
target_dir=${CARGO_TARGET_DIR:-$repo/target}
triple="$(uname -m)-unknown-linux-$RECIPE_TARGET_ENV"
out="$target_dir/$triple/$RECIPE_PROFILE"
tag=${DSO_IMAGE_TAG:-dev}
echo "[images] building static $RECIPE_PROFILE binaries ($RECIPE_BINARIES) for $triple" >&2
pkgs=(); bins=()
for b in $RECIPE_BINARIES; do pkgs+=(-p "$b"); bins+=(--bin "$b"); done
(cd "$repo" && RUSTFLAGS="$RECIPE_RUSTFLAGS" cargo build --quiet --profile "$RECIPE_PROFILE" --locked \
  --target "$triple" "${pkgs[@]}" "${bins[@]}" >&2)
mkdir -p "$out/images"
[ -s "$RECIPE_CA_BUNDLE" ] || { echo "[images] $RECIPE_CA_BUNDLE is missing: apt-get install ca-certificates" >&2; exit 1; }
for b in $RECIPE_BINARIES; do
  if ldd "$out/$b" 2>&1 | grep -q '=>'; then echo "[images] $out/$b is dynamically linked; the recipe wants a static binary" >&2; exit 1; fi
  python3 "$repo/tests/cluster/mkimage.py" -t "dso.local/$b:$tag" -o "$out/images/$b.tar" \
    --file "$out/$b:/$b:755" --file "$RECIPE_CA_BUNDLE:$RECIPE_CA_BUNDLE:644" \
    --entrypoint "/$b" --user "$RECIPE_USER" --env "$RECIPE_ENV"
  echo "[images] dso.local/$b:$tag ($(du -h "$out/$b" | cut -f1) binary)" >&2
done
if [ "${1:-}" = --import ]; then
  . "$repo/tests/cluster/common.sh"
  for b in $RECIPE_BINARIES; do ctr_ images import "$out/images/$b.tar" >/dev/null; done
  echo "[images] imported into the local node" >&2
fi
echo "$out"
