#!/usr/bin/env bash
# Runs every coverage-guided fuzz target in fuzz/ (cargo fuzz, libFuzzer, no sanitizer: it
# builds on stable Rust) for SECONDS each, starting from the committed seeds in
# fuzz/corpus/. What a run finds stays out of the tree; a crash fails the run, and its input
# is kept in fuzz/artifacts/ (add it to the seeds once fixed).
# Usage: scripts/fuzz.sh [SECONDS]   (default 20; bench/fuzz.sh runs them longer)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
if ! command -v cargo-fuzz >/dev/null; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
cd fuzz
cargo fuzz build -s none
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in $(cargo fuzz list); do
    mkdir -p "$work/$target"
    echo "== fuzzing $target for ${seconds}s"
    # New inputs go to the temporary corpus (first); the seeds are read only.
    if ! cargo fuzz run -s none "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$work/$target.log" 2>&1; then
        tail -40 "$work/$target.log"
        echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done' "$work/$target.log" | tr '\n' ' '
    echo
done
