#!/usr/bin/env bash
# Frozen-base precision benchmark (model.base_dtype): for random-weight
# checkpoints with the real configs of published models (assets/configs/,
# written in bfloat16 as those models are published, by `fedpeft
# init-model`), one LoRA training step per base dtype, each in its own
# process so its peak RSS is its own: load time, weights held, peak RSS
# (VmHWM: load + step), step time. Prints a Markdown table.
#
#   scripts/bench_base_dtype.sh
#   MODELS="smollm2-135m qwen2.5-0.5b" DTYPES="float32 nf4" scripts/bench_base_dtype.sh
#
# Environment (defaults):
#   BUILD_DIR=build   MODELS="smollm2-135m qwen2.5-0.5b qwen3-0.6b llama-3.2-1b"
#   DTYPES="float32 bfloat16 int8 nf4"   BATCH=1 SEQ=512 THREADS=2
#   STEPS=2 WARMUP=1 (timed / untimed steps)   RANK=8 (LoRA on q,k,v,o)
#   MODEL_DIR=$BUILD_DIR/bench-models (the checkpoints, made once)
#   EXTRA=      more fedpeft_bench_train flags, e.g. --gradient-checkpointing
#   OUT=        file to also write the raw result lines to
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-build}"
MODELS="${MODELS:-smollm2-135m qwen2.5-0.5b qwen3-0.6b llama-3.2-1b}"
DTYPES="${DTYPES:-float32 bfloat16 int8 nf4}"
BATCH="${BATCH:-1}" SEQ="${SEQ:-512}" THREADS="${THREADS:-2}"
STEPS="${STEPS:-2}" WARMUP="${WARMUP:-1}" RANK="${RANK:-8}"
MODEL_DIR="${MODEL_DIR:-$BUILD_DIR/bench-models}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY-PASSIVE}"
cd "$ROOT"

if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >&2
fi
ninja -C "$BUILD_DIR" fedpeft fedpeft_bench_train >&2

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

lines=()
for m in $MODELS; do
  dir="$MODEL_DIR/$m"
  if [[ ! -f "$dir/model.safetensors" ]]; then
    echo "== init-model $m (bfloat16) into $dir" >&2
    "$BUILD_DIR/fedpeft" init-model --config "assets/configs/$m" \
      --out "$dir" --dtype bfloat16 --seed 1 >&2
  fi
  for d in $DTYPES; do
    echo "== $m base_dtype=$d" >&2
    line=$("$BUILD_DIR/bench/fedpeft_bench_train" --model "$dir" \
      --base-dtype "$d" --batch "$BATCH" --seq "$SEQ" --threads "$THREADS" \
      --steps "$STEPS" --warmup "$WARMUP" --rank "$RANK" ${EXTRA:-})
    echo "$line" >&2
    [[ -z "${OUT:-}" ]] || echo "$line" >>"$OUT"
    lines+=("$m $line")
  done
done

echo
echo "| model | base_dtype | load s | weights MiB | peak RSS MiB | RSS / float32 | step ms | first loss |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
declare -A f32rss
for entry in "${lines[@]}"; do
  m="${entry%% *}" line=" ${entry#* }"
  d=$(field base_dtype "$line") rss=$(field peak_rss_mb "$line")
  [[ "$d" == float32 ]] && f32rss[$m]="$rss"
  ratio="-"
  [[ -n "${f32rss[$m]:-}" ]] && ratio=$(awk -v a="$rss" -v b="${f32rss[$m]}" 'BEGIN{printf "%.2f", a/b}')
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$m" "$d" \
    "$(field load_s "$line")" "$(field weights_mb "$line")" "$rss" "$ratio" \
    "$(field step_ms_median "$line")" "$(field first_loss "$line")"
done
