#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time (tests/run.sh: 40 s each) and prints,
# per target, the executions per second and the total. A crash fails the run; libFuzzer saves
# the input under fuzz/artifacts/<target>/ and prints how to replay it.
#   tests/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
# Needs the nightly toolchain and cargo-fuzz (tests/cluster/deps.sh installs it). New inputs go
# to a temporary corpus; the committed seeds in fuzz/corpus/ stay as they are. Longer runs:
# fuzz/README.md.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo/fuzz"
. "$repo/tests/cluster/common.sh"
export PATH="$CACHE/cargo-fuzz-$CARGO_FUZZ_VERSION/bin:$PATH"
seconds=${1:-40}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(admission validate plan)
export CARGO_TARGET_DIR=${DSO_FUZZ_TARGET_DIR:-$CACHE/cargo-target-fuzz}
# Safe Rust: no AddressSanitizer (3-5x the speed); debug assertions catch overflows.
flags=(-O -a -s none --target-dir "$CARGO_TARGET_DIR")
cargo +nightly fuzz build "${flags[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  log_file="$work/$t.log"
  if ! cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -dict=dict/dso.dict -print_final_stats=1 -close_fd_mask=3 >"$log_file" 2>&1; then
    tail -n 60 "$log_file" >&2
    echo "[fuzz] $t: FAILED (input saved under fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log_file")
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log_file")
  cov=$(grep -o 'cov: [0-9]*' "$log_file" | tail -n 1)
  echo "[fuzz] $t: ${runs:-?} executions in ${secs:-?} s ($(( ${runs:-0} / ${secs:-1} ))/s), ${cov:-cov: ?}, corpus $(ls "$work/$t" | wc -l) new + $(ls "corpus/$t" | wc -l) seeds, no crash"
done
