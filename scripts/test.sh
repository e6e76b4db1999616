#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests that spawn the real binary against
# real servers on loopback, then builds the release tarball and .deb and checks them, then
# every coverage-guided fuzz target for a bounded time.
# Installs what the tests need when it is missing. Ends with the total over every test
# binary.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
# nginx lives in /usr/sbin, which a normal user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
# The tests start every server they need (nginx and HAProxy for their engines' tests, Pebble
# as the ACME CA); curl is used by the README examples and verifies issued certificates;
# systemd-analyze checks the unit Gatehouse prints.
need_commands curl:curl nginx:nginx-light haproxy:haproxy pebble:pebble pebble-challtestsrv:pebble \
    systemd-analyze:systemd
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(awk '/^test result:/ {n += $4} END {print n + 0}' "$log")
failed=$(awk '/^test result:/ {n += $6} END {print n + 0}' "$log")
echo "tests: $passed passed, $failed failed"
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
scripts/package.sh
scripts/check-package.sh
scripts/fuzz.sh --runs "${FUZZ_RUNS:-1000000}"
