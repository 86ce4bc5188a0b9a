#!/usr/bin/env bash
# ThreadSanitizer run of the tests that exercise threads: the gRPC service
# (coordinator_test: real server and clients on loopback) and the round
# stages and engine without gRPC (coordinator_stages_test). Not
# transport_test: its codec tests are single-threaded, and its gRPC stream
# tests did not finish in 50 minutes under TSan on this 2-core machine.
#   scripts/tsan.sh                                build-tsan/, both
#   scripts/tsan.sh --gtest_filter='Secagg*'       arguments go to each binary
#   FEDPEFT_TSAN_BUILD_DIR=DIR scripts/tsan.sh     build elsewhere
# Every fedpeft source is compiled with -fsanitize=thread. Debian's gRPC,
# protobuf, abseil and LibTorch are not, so TSan cannot see their
# synchronisation and reports memory that gRPC hands between its threads
# (thousands of reports). No suppression file hides them wholesale (a stack
# of ours sits under every gRPC handler): scripts/tsan_triage.py attributes
# each report to the innermost non-runtime frame of each racing access and
# fails the run on any report where that frame is fedpeft's own source;
# the rest are counted by library and printed. LibTorch runs on one
# intra-op thread (OMP_NUM_THREADS=1): libgomp's barriers are invisible too.
# Exits non-zero when a test fails or a race is in fedpeft code.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${FEDPEFT_TSAN_BUILD_DIR:-build-tsan}"

FEDPEFT_SKIP_BUILD=1 scripts/setup.sh  # packages only; the build is below
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -G Ninja -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS="-fsanitize=thread -fno-omit-frame-pointer" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" \
    -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread"
fi
ninja -C "$BUILD_DIR" fedpeft coordinator_test coordinator_stages_test

reports="$BUILD_DIR/tsan-reports"
rm -rf "$reports"
mkdir -p "$reports"
export OMP_NUM_THREADS=1
# Reports go to files (log_path), not into the tests' output: printing
# thousands of them slows the process enough to time out a stream.
export TSAN_OPTIONS="log_path=$PWD/$reports/tsan halt_on_error=0 exitcode=0 \
ignore_noninstrumented_modules=1 history_size=4 ${TSAN_OPTIONS:-}"
status=0
for t in coordinator_test coordinator_stages_test; do
  echo "== $t"
  "$BUILD_DIR/tests/$t" "$@" 2>&1 | grep -E '^\[ *(PASSED|FAILED|SKIPPED) ' \
    || true
  [[ "${PIPESTATUS[0]}" == 0 ]] || status=1
done
shopt -s nullglob
files=("$reports"/tsan*)
if ((${#files[@]})); then
  python3 scripts/tsan_triage.py "${files[@]}" || status=1
else
  echo "tsan_triage: no reports"
fi
exit "$status"
