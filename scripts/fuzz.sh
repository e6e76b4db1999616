#!/usr/bin/env bash
# Runs every coverage-guided fuzz target in fuzz/ (cargo fuzz, libFuzzer, no sanitizer: it
# builds on stable Rust), starting from the committed seeds in fuzz/corpus/. What a run finds
# stays out of the tree; a crash fails the run, and its input is kept in fuzz/artifacts/ (add
# it to the seeds once fixed).
# Usage: scripts/fuzz.sh --runs N      N inputs per target from a fixed seed: the same inputs
#                                      every time (the test script: CI stays reproducible)
#        scripts/fuzz.sh --seconds S   S seconds per target, randomly seeded (bench/fuzz.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    --runs) budget=(-seed=1 -runs="$2"); what="$2 inputs" ;;
    --seconds) budget=(-max_total_time="$2"); what="${2}s" ;;
    *) echo "usage: $0 --runs N | --seconds S" >&2; exit 2 ;;
esac
source scripts/packages.sh
# libfuzzer-sys compiles libFuzzer's C++ sources.
need_commands c++:g++
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
    echo "== fuzzing $target: $what"
    # New inputs go to the temporary corpus (first); the seeds are read only.
    if ! cargo fuzz run -s none "$target" "$work/$target" "corpus/$target" -- \
        "${budget[@]}" -print_final_stats=1 >"$work/$target.log" 2>&1; then
        tail -40 "$work/$target.log"
        echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^Done' "$work/$target.log" | tr '\n' ' '
    echo
done
