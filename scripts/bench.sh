#!/usr/bin/env bash
# LoRA training benchmark: fedpeft's C++ step (bench/bench_train.cc) next to
# the same model, LoRA and batch in PyTorch eager (bench/torch_eager_lora.py),
# run interleaved in the same invocation with the same thread counts, so
# machine noise hits both alike. Prints a Markdown table of medians.
#
#   scripts/bench.sh                      # both presets, 2 threads, 5 repeats
#   REPEATS=3 THREADS="1 2" PRESETS=stories260K scripts/bench.sh
#   PRESETS= MODELS="build/bench-models/qwen2.5-0.5b" SHAPES=1x512 scripts/bench.sh
#
# Environment (defaults):
#   BUILD_DIR=build     CMake build directory (configured if absent)
#   REPEATS=5           interleaved C++/PyTorch runs per preset and thread count
#   THREADS="2"         thread counts to measure (torch intra-op, OpenMP, OpenBLAS)
#   PRESETS="stories260K llama-512x8"   (PRESETS= runs none)
#   MODELS=             Hugging Face model folders (e.g. build/bench-models/NAME
#                       from `fedpeft init-model`, see scripts/bench_base_dtype.sh)
#                       run through both sides with --model, one row per
#                       folder (its basename) and shape
#   SHAPES="1x512 4x256"  BATCHxSEQ shapes of the MODELS rows
#   BASE_DTYPE=float32  the frozen base of the MODELS rows: C++ --base-dtype,
#                       PyTorch --dtype (float32 or bfloat16; they differ in
#                       bfloat16: C++ stores the base in bf16 and computes in
#                       f32, PyTorch runs the base Linears in bf16)
#   STEPS / WARMUP      timed / untimed steps per run (default per preset;
#                       3 / 1 for MODELS rows)
#   NO_BUILD=1          use the fedpeft_bench_train already in BUILD_DIR
#                       (no cmake/ninja), e.g. while someone else builds there
#   PYTHON=/usr/bin/python3   the interpreter with Debian's python3-torch
#   OUT=                file to also write the raw result lines to
#   SAME_HEAP=1         also run PyTorch with the heap settings fedpeft uses
#                       (common/heap.h: glibc mmap threshold 1 GiB, no trim,
#                       through GLIBC_TUNABLES), a third column that shows how
#                       much of the gap is the allocator; 0 skips it
#   OMP_WAIT_POLICY=PASSIVE  passed to both sides. LibTorch runs elementwise
#                       ops on libgomp's pool and matmuls on OpenBLAS's own
#                       pthread pool; with libgomp's default spin-waiting the
#                       idle pool burns the cores the busy one needs, which
#                       made 2-thread steps 3.5x slower than with PASSIVE on
#                       a shared 2-core machine (see bench/README.md). Set
#                       OMP_WAIT_POLICY= (empty) to measure the default.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-build}"
REPEATS="${REPEATS:-5}"
THREADS="${THREADS:-2}"
PRESETS="${PRESETS-stories260K llama-512x8}"
MODELS="${MODELS:-}"
SHAPES="${SHAPES:-1x512 4x256}"
BASE_DTYPE="${BASE_DTYPE:-float32}"
PYTHON="${PYTHON:-/usr/bin/python3}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY-PASSIVE}"
[[ -n "$OMP_WAIT_POLICY" ]] || unset OMP_WAIT_POLICY
cd "$ROOT"

die() { echo "bench.sh: $*" >&2; exit 1; }

# --- prerequisites ----------------------------------------------------------
if ! "$PYTHON" -c 'import torch, numpy' 2>/dev/null; then
  die "$PYTHON cannot import torch and numpy. The PyTorch reference needs
Debian's PyTorch: sudo apt-get install python3-torch python3-numpy
(a pyenv/venv python3 on PATH will not see it; set PYTHON=... to override)."
fi

if [[ -z "${NO_BUILD:-}" ]]; then
  echo "== building fedpeft_bench_train in $BUILD_DIR" >&2
  if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
    cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
  fi
  ninja -C "$BUILD_DIR" fedpeft_bench_train >&2
fi
BIN="$BUILD_DIR/bench/fedpeft_bench_train"
[[ -x "$BIN" ]] || die "$BIN was not built"

# --- which BLAS both sides use ----------------------------------------------
# Debian's LibTorch and python3-torch are the same libtorch_cpu.so, linked to
# libblas.so.3, which the alternatives system points at an implementation.
cpp_blas="$(ldd "$BIN" | awk '/libblas|openblas/ {print $3}' | xargs -r readlink -f | sort -u | tr '\n' ' ')"
py_blas="$("$PYTHON" - <<'EOF'
import torch, os
paths = set()
with open("/proc/self/maps") as f:
    for line in f:
        p = line.split()[-1]
        if "blas" in p:
            paths.add(os.path.realpath(p))
cfg = torch.__config__.show()
info = [s.strip() for s in cfg.replace(",", "\n").splitlines() if "BLAS_INFO" in s]
print(" ".join(sorted(paths)), "|", info[0] if info else "BLAS_INFO ?", "| torch", torch.__version__)
EOF
)"
echo "C++ BLAS:     $cpp_blas" >&2
echo "PyTorch BLAS: $py_blas" >&2
echo "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-<libgomp default>}" >&2
case "$cpp_blas $py_blas" in
  *openblas-pthread*) ;;
  *) echo "bench.sh: warning: libblas.so.3 does not resolve to OpenBLAS (pthread);" \
          "install libopenblas0-pthread for representative numbers" >&2 ;;
esac

# --- runs -------------------------------------------------------------------
raw="$(mktemp)"
trap 'rm -f "$raw"' EXIT

steps_for() {  # preset -> "--steps K --warmup W"
  local s w
  case "$1" in
    stories260K) s=10; w=3 ;;
    model) s=3; w=1 ;;
    *) s=5; w=2 ;;
  esac
  echo "--steps ${STEPS:-$s} --warmup ${WARMUP:-$w}"
}

# Each run: a label, then the flags both sides take (threads and steps are
# added below); a MODELS row also needs the base dtype, spelled differently.
runs=()
for preset in $PRESETS; do
  runs+=("$preset|--preset $preset $(steps_for "$preset")||")
done
for m in $MODELS; do
  [[ -f "$m/config.json" ]] || die "MODELS: $m has no config.json"
  [[ "$m" != *[[:space:]\|]* ]] || die "MODELS: '$m': no spaces or | in paths"
  for shape in $SHAPES; do
    [[ "$shape" =~ ^([0-9]+)x([0-9]+)$ ]] || die "SHAPES: '$shape' is not BATCHxSEQ"
    runs+=("$(basename "$m") $shape|--model $m --batch ${BASH_REMATCH[1]} --seq ${BASH_REMATCH[2]} $(steps_for model)|--base-dtype $BASE_DTYPE|--dtype $BASE_DTYPE")
  done
done
[[ ${#runs[@]} -gt 0 ]] || die "nothing to run: PRESETS and MODELS are both empty"

run_cpp() {  # flags cpp-flags threads
  OMP_NUM_THREADS="$3" OPENBLAS_NUM_THREADS="$3" \
    "$BIN" $1 $2 --threads "$3" 2>/dev/null
}
run_py() {  # flags py-flags threads
  OMP_NUM_THREADS="$3" OPENBLAS_NUM_THREADS="$3" \
    "$PYTHON" bench/torch_eager_lora.py $1 $2 --threads "$3" 2>/dev/null
}
# PyTorch with fedpeft's heap settings (common/heap.h), labelled pytorch_heap.
run_py_heap() {
  GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=2147483647 \
    run_py "$@" | sed 's/impl=pytorch /impl=pytorch_heap /'
}
SAME_HEAP="${SAME_HEAP:-1}"

for run in "${runs[@]}"; do
  IFS='|' read -r label flags cpp_flags py_flags <<<"$run"
  for t in $THREADS; do
    for ((r = 1; r <= REPEATS; r++)); do
      echo "== $label threads=$t repeat $r/$REPEATS" >&2
      # Alternate which side goes first so drift in machine load cancels.
      if ((r % 2)); then
        line_c="$(run_cpp "$flags" "$cpp_flags" "$t")" || die "C++ bench failed ($label, $t threads)"
        line_p="$(run_py "$flags" "$py_flags" "$t")" || die "PyTorch bench failed ($label, $t threads)"
      else
        line_p="$(run_py "$flags" "$py_flags" "$t")" || die "PyTorch bench failed ($label, $t threads)"
        line_c="$(run_cpp "$flags" "$cpp_flags" "$t")" || die "C++ bench failed ($label, $t threads)"
      fi
      echo "$line_c repeat=$r" | tee -a "$raw" >&2
      echo "$line_p repeat=$r" | tee -a "$raw" >&2
      if [[ "$SAME_HEAP" == 1 ]]; then
        line_h="$(run_py_heap "$flags" "$py_flags" "$t")" || die "PyTorch (same heap) bench failed ($label, $t threads)"
        echo "$line_h repeat=$r" | tee -a "$raw" >&2
      fi
    done
  done
done
[[ -n "${OUT:-}" ]] && cp "$raw" "$OUT"

# --- table ------------------------------------------------------------------
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)" MODELS="$MODELS" BASE_DTYPE="$BASE_DTYPE" \
"$PYTHON" - "$raw" <<'EOF'
import collections, os, statistics, sys

# One row per preset (or model folder), thread count and shape, in run order.
runs = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    kv = dict(f.split("=", 1) for f in line.split())
    key = (kv["preset"], int(kv["threads"]), kv["batch"], kv["seq"])
    runs[key][kv["impl"]].append(kv)

def med(rows, key):
    return statistics.median(float(r[key]) for r in rows)

same_heap = any(by.get("pytorch_heap") for by in runs.values())
print("| preset | threads | batch x seq | C++ step ms | PyTorch step ms "
      "| C++ / PyTorch | C++ tokens/s | PyTorch tokens/s | C++ peak RSS MB "
      "| PyTorch peak RSS MB | first loss C++ / PyTorch |"
      + (" PyTorch, same heap, ms | C++ / PyTorch, same heap |" if same_heap else ""))
print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if same_heap else ""))

def paired(c, p):
    pairs = {r["repeat"]: r for r in p}
    return [float(r["step_ms_median"]) / float(pairs[r["repeat"]]["step_ms_median"])
            for r in c if r["repeat"] in pairs]
verdicts = []
for (preset, threads, _, _), by in runs.items():
    # A model folder (preset=DIR on both sides) shows as its basename.
    preset = os.path.basename(os.path.normpath(preset))
    c, p = by["cpp"], by["pytorch"]
    # Paired by repeat: each C++ run against the PyTorch run beside it.
    pairs = {r["repeat"]: r for r in p}
    ratios = [float(r["step_ms_median"]) / float(pairs[r["repeat"]]["step_ms_median"])
              for r in c if r["repeat"] in pairs]
    ratio = statistics.median(ratios)
    print(f"| {preset} | {threads} | {c[0]['batch']} x {c[0]['seq']} "
          f"| {med(c, 'step_ms_median'):.1f} | {med(p, 'step_ms_median'):.1f} "
          f"| {ratio:.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
          f"| {med(c, 'tokens_per_s'):.0f} | {med(p, 'tokens_per_s'):.0f} "
          f"| {med(c, 'peak_rss_mb'):.0f} | {med(p, 'peak_rss_mb'):.0f} "
          f"| {float(c[0]['first_loss']):.5f} / {float(p[0]['first_loss']):.5f} |"
          + (f" {med(by['pytorch_heap'], 'step_ms_median'):.1f} "
             f"| {statistics.median(paired(c, by['pytorch_heap'])):.2f} |"
             if by.get("pytorch_heap") else (" | |" if same_heap else "")))
    verdicts.append((f"{preset} {c[0]['batch']}x{c[0]['seq']}", threads, ratio))
print()
print(f"Medians of {len(c)} interleaved runs each; C++ / PyTorch is the median "
      "of per-repeat ratios (range in parentheses). Target: <= 0.80.")
print("First loss: the same weights and tokens give the same loss on "
      "stories260K and on MODELS folders with a float32 base (a correctness "
      "check); llama-512x8 is randomly initialised differently on each side.")
if os.environ.get("MODELS"):
    print(f"MODELS rows: base dtype {os.environ.get('BASE_DTYPE', 'float32')} "
          "(C++ --base-dtype, PyTorch --dtype).")
if same_heap:
    print("PyTorch, same heap: PyTorch eager run with fedpeft's heap settings "
          "(GLIBC_TUNABLES mmap threshold 1 GiB, no trim); the target is "
          "against idiomatic PyTorch, the column shows the allocator's share.")
print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '<default>')}. "
      f"Load average at the end (1/5/15 min, {os.cpu_count()} CPUs): "
      f"{os.environ.get('LOAD_AFTER', '?')}.")
for preset, threads, ratio in verdicts:
    print(f"- {preset}, threads={threads}: {ratio:.2f} "
          f"{'meets' if ratio <= 0.8 else 'MISSES'} the 0.8x target")
EOF
