#!/usr/bin/env bash
# Runs the dso-init benchmark (init-image/examples/bench.rs): dso-init vs the AWS CLI vs boto3,
# N = 1, 5, 20 secrets, against one moto. Starts its own moto on PORT (default 5119) unless
# DSO_MOTO_ENDPOINT is set.
#
#   init-image/bench.sh [RUNS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
runs=${1:-7}
image=${DSO_INIT_IMAGE_TAR:-$(mktemp -d)/dso-init.tar}
bin=$(init-image/build-local-image.sh "$image")
if [ -z "${DSO_MOTO_ENDPOINT:-}" ]; then
  port=${PORT:-5119}
  DSO_MOTO_ENDPOINT=$(tests/moto.sh start "$port")
  trap 'tests/moto.sh stop "$port"' EXIT
fi
export DSO_MOTO_ENDPOINT DSO_INIT_BIN="$bin" DSO_INIT_IMAGE_TAR="$image"
# The harness only times child processes: the debug build (shared with `cargo test`) is fine.
cargo run --quiet -p dso-init --example bench -- "$runs"
