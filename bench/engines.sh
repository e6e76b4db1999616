#!/usr/bin/env bash
# nginx and HAProxy engine timings (see bench/README.md): render/compare/write of 10,000 vhosts
# through the example templates, then the HAProxy runtime API with nginx OSS reloads as the
# contrast. Loopback only; bounded in count and time.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
source scripts/packages.sh
export PATH="$PATH:/usr/sbin:/sbin"
need_commands nginx:nginx-light haproxy:haproxy
cargo build --release --locked -p gatehouse-bench
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
./target/release/render-bench --template examples/nginx.tmpl --platform nginx --dir "$dir"
./target/release/render-bench --template examples/haproxy.tmpl --platform haproxy --dir "$dir"
./target/release/haproxy-bench --dir "$dir"
