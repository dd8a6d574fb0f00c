#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECS seconds each (default 600), JOBS at a time
# (default 2), and prints one line per target: executions, coverage, crashes. Crashing inputs
# stay in fuzz/artifacts/TARGET/. Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly
# toolchain (or RUSTC_BOOTSTRAP=1 with stable: FUZZ_CARGO="cargo fuzz").
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
jobs=${JOBS:-2}
cargo_fuzz=${FUZZ_CARGO:-cargo +nightly fuzz}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/sinter/fuzz-target}
logs=$(mktemp -d)
targets=$($cargo_fuzz list)
$cargo_fuzz build
run() {
    local target=$1
    mkdir -p "corpus/$target"
    $cargo_fuzz run "$target" "corpus/$target" -- -max_total_time="$secs" -rss_limit_mb=4096 \
        -print_final_stats=1 >"$logs/$target.log" 2>&1 || true
}
export -f run
export cargo_fuzz secs logs
printf '%s\n' $targets | xargs -P "$jobs" -I{} bash -c 'run {}'
printf '%-22s %14s %8s %8s %8s\n' target executions secs edges crashes
for target in $targets; do
    log="$logs/$target.log"
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    time=$(grep -o 'stat::total_time_secs\|Done [0-9]* runs in [0-9]* second' "$log" | tail -1 | grep -o '[0-9]* second' | grep -o "[0-9]*" || echo "-")
    edges=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
    crashes=$(ls "artifacts/$target" 2>/dev/null | grep -c '^crash-\|^oom-\|^leak-\|^timeout-' || true)
    printf '%-22s %14s %8s %8s %8s\n' "$target" "$execs" "$time" "$edges" "$crashes"
done
echo "logs: $logs"
