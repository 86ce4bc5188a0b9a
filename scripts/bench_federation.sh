#!/usr/bin/env bash
# Federated-runtime benchmarks (issue: federated runtime):
#  1. round overhead = round wall time - slowest worker's compute, and bytes
#     per round per worker, for 8/32/128 in-process workers over gRPC;
#  2. aggregation throughput next to memcpy (scripts/bench_aggregation.sh).
# Usage: scripts/bench_federation.sh [--workers 8,32,128] [--rounds 4]
set -euo pipefail
cd "$(dirname "$0")/.."
FEDPEFT_SKIP_BUILD=1 scripts/setup.sh
BUILD_DIR="${FEDPEFT_BUILD_DIR:-build}"
[[ -f "$BUILD_DIR/CMakeCache.txt" ]] || cmake -S . -B "$BUILD_DIR" -G Ninja
cmake --build "$BUILD_DIR" --target fedpeft_bench_rounds fedpeft_bench_aggregation
echo "## Round overhead (in-process workers, gRPC over 127.0.0.1)"
"$BUILD_DIR/bench/fedpeft_bench_rounds" "$@"
echo
echo "## Aggregation throughput vs memcpy"
"$BUILD_DIR/bench/fedpeft_bench_aggregation" --repeats 5
