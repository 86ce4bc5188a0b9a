#!/usr/bin/env bash
# Aggregation throughput (bench/bench_aggregation.cc): GB/s of client update
# data consumed by each strategy next to std::memcpy of the same buffers in
# the same run, medians of repeats, as a Markdown table. Target: fedavg at
# >= 50% of memcpy.
#
#   scripts/bench_aggregation.sh
#   scripts/bench_aggregation.sh --clients 8 --strategies fedavg --repeats 9
#
# Arguments are passed to fedpeft_bench_aggregation (--clients, --adapters,
# --strategies, --repeats, --threads).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cmake -S . -B build -G Ninja >/dev/null
ninja -C build fedpeft_bench_aggregation >&2
build/bench/fedpeft_bench_aggregation "$@"
