#!/usr/bin/env bash
# Drove discovery timings: see bench/README.md. Loopback only; bounded in count and time.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
cargo build --release --locked -p gatehouse -p gatehouse-bench
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
./target/release/drove-bench --gatehouse ./target/release/gatehouse --dir "$dir" "$@"
