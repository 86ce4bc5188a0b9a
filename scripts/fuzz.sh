#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ into build-fuzz/ (clang, ASan, UBSan)
# and fuzzes each for a while, on a copy of its seed corpus.
#   scripts/fuzz.sh                      every target, 300 s each
#   scripts/fuzz.sh --seconds 10         the short run of scripts/test.sh
#   scripts/fuzz.sh config tokenizer     some targets
#   scripts/fuzz.sh --runs 10000000 ...  a number of executions instead of
#                                        a time (the long runs of
#                                        docs/design.md)
#   FEDPEFT_FUZZ_BUILD_DIR=DIR ...       build elsewhere (default: build-fuzz)
# On a crash, timeout or OOM the input is copied to
# fuzz/regressions/<target>/ (replayed from then on by fuzz_regression_test)
# and the script exits non-zero, printing the file and how to reproduce.
# Inputs that grow the coverage land in <build dir>/corpus-work/<target>/,
# never in the committed fuzz/corpus/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

SECONDS_PER_TARGET=300
RUNS=0
TARGETS=()
while (($#)); do
  case "$1" in
    --seconds) SECONDS_PER_TARGET="$2"; shift 2 ;;
    --seconds=*) SECONDS_PER_TARGET="${1#*=}"; shift ;;
    --runs) RUNS="$2"; shift 2 ;;
    --runs=*) RUNS="${1#*=}"; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
ALL_TARGETS=(tensor_stream decode_tensor safetensors config tokenizer
             secagg_messages hf_config adapter_config llama2c app_config
             hf_tokenizer gguf openai_request simulate_config)
((${#TARGETS[@]})) || TARGETS=("${ALL_TARGETS[@]}")

# Longest input libFuzzer makes, per target: room for a small adapter's
# upload stream, a tensor, a safetensors file, a config, a tokenizer, a
# session of a few secure-aggregation clients, a model or adapter config, a
# tiny llama2.c checkpoint, a shipped YAML config, a tiny GGUF model with its
# 512-piece tokenizer (the largest seed, 16.6 KB).
max_len() {
  case "$1" in
    tensor_stream) echo 16384 ;;
    decode_tensor) echo 4096 ;;
    safetensors) echo 8192 ;;
    config) echo 4096 ;;
    tokenizer) echo 16384 ;;
    secagg_messages) echo 4096 ;;
    hf_config) echo 4096 ;;
    adapter_config) echo 4096 ;;
    llama2c) echo 8192 ;;
    app_config) echo 8192 ;;
    hf_tokenizer) echo 8192 ;;
    gguf) echo 24576 ;;
    openai_request) echo 4096 ;;
    simulate_config) echo 8192 ;;
    *) echo "fuzz.sh: unknown target '$1' (known: ${ALL_TARGETS[*]})" >&2
       exit 2 ;;
  esac
}
for t in "${TARGETS[@]}"; do max_len "$t" >/dev/null; done

BUILD_DIR="${FEDPEFT_FUZZ_BUILD_DIR:-build-fuzz}"
command -v clang++ >/dev/null || {
  echo "fuzz.sh: clang++ not found; scripts/setup.sh installs clang" >&2
  exit 1
}
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
if [[ ! -f "$BUILD_DIR/CMakeCache.txt" ]]; then
  # (ccache, when present, is set up in CMakeLists.txt; FEDPEFT_FUZZ adds
  # the sanitizer flags and skips tests, bench and CLI.)
  cmake -S . -B "$BUILD_DIR" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_COMPILER=clang++ -DFEDPEFT_FUZZ=ON
fi
cmake --build "$BUILD_DIR" -j "$(nproc)" \
  --target "${TARGETS[@]/#/fuzz_}"

# ASan's allocator, tuned for runs of hours, not for detection (it finds the
# same bugs): with its defaults it hands freed pages back to the kernel
# every few seconds and faults them in again, and on this VM (TLB
# shootdowns) the config target fell from 2,800 to 680 executions/s within
# 8 minutes, a third of its time in the kernel. Never releasing them, the
# kernel's share fell to ~1.5% and its run of 10^7 averaged 1,443/s (the
# rest is ASan's allocator under yaml-cpp's many small allocations, and the
# inputs growing to 4 KB). A smaller quarantine (64 MiB, use-after-free still
# caught for the last 64 MiB freed) and 5-frame allocation stacks keep the
# RSS that adds under -rss_limit_mb. Reproducing an input by hand (below)
# runs with ASan's defaults and full stacks.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0:allocator_release_to_os_interval_ms=-1:quarantine_size_mb=64:malloc_context_size=5}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
status=0
for t in "${TARGETS[@]}"; do
  work="$BUILD_DIR/corpus-work/$t"
  artifacts="$BUILD_DIR/artifacts/$t"
  mkdir -p "$work" "$artifacts"
  # A copy: libFuzzer adds to (and with -reduce_inputs removes from) the
  # first corpus directory.
  cp -n "fuzz/corpus/$t"/* "$work"/ 2>/dev/null || true
  rm -f "$artifacts"/*
  if ((RUNS > 0)); then
    limit=(-runs="$RUNS")
    echo "fuzz.sh: $t for $RUNS executions"
  else
    limit=(-max_total_time="$SECONDS_PER_TARGET")
    echo "fuzz.sh: $t for ${SECONDS_PER_TARGET}s"
  fi
  log="$BUILD_DIR/fuzz-$t.log"
  set +e
  "$BUILD_DIR/fuzz/fuzz_$t" "$work" \
    "${limit[@]}" -max_len="$(max_len "$t")" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+.*DONE|^Done [0-9]+ runs' \
    "$log" | sed "s/^/fuzz.sh: $t: /" || true
  found=("$artifacts"/*)
  if ((rc != 0)) || [[ -e "${found[0]}" ]]; then
    status=1
    echo "fuzz.sh: $t FAILED (exit $rc); log: $log" >&2
    grep -E '^==[0-9]+==ERROR|^SUMMARY|runtime error|FUZZ_CHECK|deadly signal' \
      "$log" | head -5 >&2 || true
    mkdir -p "fuzz/regressions/$t"
    for a in "${found[@]}"; do
      [[ -e "$a" ]] || continue
      dest="fuzz/regressions/$t/$(basename "$a")"
      cp "$a" "$dest"
      echo "fuzz.sh: input saved as $dest; reproduce with:" >&2
      echo "  $BUILD_DIR/fuzz/fuzz_$t $dest" >&2
    done
  fi
done
exit "$status"
