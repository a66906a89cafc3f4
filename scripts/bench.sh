#!/bin/sh
# Reproduces every figure of BENCHMARKS.md: builds the release binary and runs the pipeline benchmark
# (targets 1-6). Full run: about 10 minutes on the 2-core dev machine. The results table is printed and also
# saved to target/bench-results-<UTC time>.md.
#   scripts/bench.sh            full run (the issue's sizes)
#   scripts/bench.sh --quick    smaller inputs, 15 s quota run (development only, not the issue's figures)
#   BENCH_ONLY=3,4 scripts/bench.sh    only some targets;  BENCH_REPEAT=5 for best-of-5;  BENCH_KEEP=1 keeps inputs
set -eu
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
out="$target_dir/bench-results-$(date -u +%Y%m%dT%H%M%SZ).md"
cargo bench --bench pipeline -- "$@" | tee "$out"
echo "results saved to $out"
