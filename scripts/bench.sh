#!/usr/bin/env bash
# LoRA training benchmark: fedpeft's C++ step (bench/bench_train.cc) next to
# the same model, LoRA and batch in PyTorch eager (bench/torch_eager_lora.py),
# run interleaved in the same invocation with the same thread counts, so
# machine noise hits both alike. Prints a Markdown table of medians.
#
#   scripts/bench.sh                      # both presets, 2 threads, 5 repeats
#   REPEATS=3 THREADS="1 2" PRESETS=stories260K scripts/bench.sh
#
# Environment (defaults):
#   BUILD_DIR=build     CMake build directory (configured if absent)
#   REPEATS=5           interleaved C++/PyTorch runs per preset and thread count
#   THREADS="2"         thread counts to measure (torch intra-op, OpenMP, OpenBLAS)
#   PRESETS="stories260K llama-512x8"
#   STEPS / WARMUP      timed / untimed steps per run (default per preset)
#   PYTHON=/usr/bin/python3   the interpreter with Debian's python3-torch
#   OUT=                file to also write the raw result lines to
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
PRESETS="${PRESETS:-stories260K llama-512x8}"
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

echo "== building fedpeft_bench_train in $BUILD_DIR" >&2
if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
fi
ninja -C "$BUILD_DIR" fedpeft_bench_train >&2
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
    *) s=5; w=2 ;;
  esac
  echo "--steps ${STEPS:-$s} --warmup ${WARMUP:-$w}"
}

run_cpp() {  # preset threads
  OMP_NUM_THREADS="$2" OPENBLAS_NUM_THREADS="$2" \
    "$BIN" --preset "$1" --threads "$2" $(steps_for "$1") 2>/dev/null
}
run_py() {
  OMP_NUM_THREADS="$2" OPENBLAS_NUM_THREADS="$2" \
    "$PYTHON" bench/torch_eager_lora.py --preset "$1" --threads "$2" \
    $(steps_for "$1") 2>/dev/null
}

for preset in $PRESETS; do
  for t in $THREADS; do
    for ((r = 1; r <= REPEATS; r++)); do
      echo "== $preset threads=$t repeat $r/$REPEATS" >&2
      # Alternate which side goes first so drift in machine load cancels.
      if ((r % 2)); then
        line_c="$(run_cpp "$preset" "$t")" || die "C++ bench failed ($preset, $t threads)"
        line_p="$(run_py "$preset" "$t")" || die "PyTorch bench failed ($preset, $t threads)"
      else
        line_p="$(run_py "$preset" "$t")" || die "PyTorch bench failed ($preset, $t threads)"
        line_c="$(run_cpp "$preset" "$t")" || die "C++ bench failed ($preset, $t threads)"
      fi
      echo "$line_c repeat=$r" | tee -a "$raw" >&2
      echo "$line_p repeat=$r" | tee -a "$raw" >&2
    done
  done
done
[[ -n "${OUT:-}" ]] && cp "$raw" "$OUT"

# --- table ------------------------------------------------------------------
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)" \
"$PYTHON" - "$raw" <<'EOF'
import collections, os, statistics, sys

runs = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    kv = dict(f.split("=", 1) for f in line.split())
    runs[(kv["preset"], int(kv["threads"]))][kv["impl"]].append(kv)

def med(rows, key):
    return statistics.median(float(r[key]) for r in rows)

print("| preset | threads | batch x seq | C++ step ms | PyTorch step ms "
      "| C++ / PyTorch | C++ tokens/s | PyTorch tokens/s | C++ peak RSS MB "
      "| PyTorch peak RSS MB | first loss C++ / PyTorch |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
verdicts = []
for (preset, threads), by in runs.items():
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
          f"| {float(c[0]['first_loss']):.5f} / {float(p[0]['first_loss']):.5f} |")
    verdicts.append((preset, threads, ratio))
print()
print(f"Medians of {len(c)} interleaved runs each; C++ / PyTorch is the median "
      "of per-repeat ratios (range in parentheses). Target: <= 0.80.")
print("First loss: the same real weights and tokens give the same loss on "
      "stories260K (a correctness check); llama-512x8 is randomly initialised "
      "differently on each side.")
print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '<default>')}. "
      f"Load average at the end (1/5/15 min, {os.cpu_count()} CPUs): "
      f"{os.environ.get('LOAD_AFTER', '?')}.")
for preset, threads, ratio in verdicts:
    print(f"- {preset}, threads={threads}: {ratio:.2f} "
          f"{'meets' if ratio <= 0.8 else 'MISSES'} the 0.8x target")
EOF
