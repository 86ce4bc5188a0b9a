#!/usr/bin/env bash
# Set-up, build, every test through ctest (the README's test command), then
# a short run of every fuzz target (scripts/fuzz.sh: clang build in
# build-fuzz/, 10 s a target; FEDPEFT_SKIP_FUZZ=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
BUILD_DIR="${FEDPEFT_BUILD_DIR:-build}"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" "$@"
if [[ "${FEDPEFT_SKIP_FUZZ:-0}" != 1 ]]; then
  scripts/fuzz.sh --seconds 10
fi
