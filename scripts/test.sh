#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests that spawn the real binary against
# real servers on loopback. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
# curl is used by the README examples; the tests themselves start every server they need.
need_commands curl:curl
cargo test --workspace --locked
