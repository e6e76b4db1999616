#!/usr/bin/env bash
# The fuzz targets of scripts/fuzz.sh, run longer than the test suite does (600 s each by
# default): the parsers of request and response heads, chunked bodies, the config file and
# Drove's endpoint replies.
# Usage: bench/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/fuzz.sh --seconds "${1:-600}"
