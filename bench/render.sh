#!/usr/bin/env bash
# nginx/HAProxy engine timings: see bench/README.md. Writes only to a temporary folder.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/packages.sh
export PATH="$PATH:/usr/sbin:/sbin"
need_commands nginx:nginx-light haproxy:haproxy
cargo build --release --locked -p gatehouse-bench
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
./target/release/render-bench --template examples/nginx.tmpl --platform nginx --dir "$dir" "$@"
./target/release/render-bench --template examples/haproxy.tmpl --platform haproxy --dir "$dir" "$@"
