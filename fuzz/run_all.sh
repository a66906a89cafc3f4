#!/bin/sh
# Runs every fuzz target for SECONDS (default 600) one after the other, niced; see docs/reliability.md.
set -u
cd "$(dirname "$0")"
SECONDS_PER_TARGET=${1:-600}
for target in csv_reader xlsx_reader tokens; do
    RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz run --sanitizer none "$target" "corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 > "logs/$target.log" 2>&1
    echo "$target exit $?" >> logs/summary.txt
done
