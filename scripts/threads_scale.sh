#!/usr/bin/env bash
# Thread-mode simulation at population size: N workers as threads of one
# process sharing the base model (the quickstart's federation, IID shards,
# 1 local step, 1 round by default), at most SLOTS of them computing at once
# (simulation.compute_threads; 0 = one per core). Prints wall time, peak RSS
# and how the round ended. The README's "Thread mode at 256 workers" figures.
#   scripts/threads_scale.sh                 256 workers
#   WORKERS=128 ROUNDS=2 scripts/threads_scale.sh
#   SLOTS=0 ... (default), OUT=out/threads-scale, DEADLINE_S=900
#   BIN=build/fedpeft (another binary: e.g. an older build, to compare)
# A larger base (issue 15's "100 workers on one Qwen2.5-0.5B-shaped base"):
#   MODEL=build/bench-models/qwen2.5-0.5b \
#   TOKENIZER=../shared/assets/tokenizers/qwen3/tokenizer.json \
#   WORKERS=100 SEQ=64 BATCH=1 TARGETS=q_proj,v_proj scripts/threads_scale.sh
#   (MODEL: any Hugging Face folder; BASE_DTYPE=auto|bfloat16|nf4|...; the
#   coordinator shares the workers' copy; server-side eval is off)
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS="${WORKERS:-256}"
ROUNDS="${ROUNDS:-1}"
SLOTS="${SLOTS:-0}"
OUT="${OUT:-out/threads-scale}"
DEADLINE_S="${DEADLINE_S:-900}"
BIN="${BIN:-build/fedpeft}"
extra=()
if [[ -n "${MODEL:-}" ]]; then
  for side in coordinator worker; do
    extra+=(--set "$side.model.path=$MODEL"
            --set "$side.model.base_dtype=${BASE_DTYPE:-auto}")
    [[ -z "${TOKENIZER:-}" ]] || extra+=(--set "$side.model.tokenizer=$TOKENIZER")
  done
  extra+=(--set coordinator.eval.data.path=
          --set "coordinator.peft.lora.target_modules=[${TARGETS:-q_proj,v_proj}]"
          --set "coordinator.train.batch_size=${BATCH:-1}"
          --set "worker.data.max_seq_len=${SEQ:-64}")
fi
[[ -x "$BIN" ]] || { echo "threads_scale.sh: $BIN not built" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$(dirname "$OUT")"
log="$OUT.log"
set +e
/usr/bin/time -f "wall %e s, peak RSS %M KB" -o "$OUT.time" \
  "$BIN" simulate --config configs/quickstart.yaml --out "$OUT" \
  --set simulation.mode=threads --set simulation.workers="$WORKERS" \
  --set simulation.compute_threads="$SLOTS" \
  --set 'simulation.slowdown=[1.0]' --set 'simulation.dropout_prob=[0.0]' \
  --set simulation.sample_tokens=0 --set simulation.timeout_s=3600 \
  --set coordinator.federation.rounds="$ROUNDS" \
  --set coordinator.federation.round_deadline_s="$DEADLINE_S" \
  --set coordinator.federation.worker_timeout_s=120 \
  --set coordinator.train.local_steps=1 \
  --set worker.data.partition=iid "${extra[@]}" > "$log" 2>&1
rc=$?
set -e
echo "workers=$WORKERS rounds=$ROUNDS compute_threads=$SLOTS exit=$rc"
cat "$OUT.time"
grep -E "rounds aggregated|compute slots:|OpenBLAS" "$log" | sed 's/^/  /' || true
exit "$rc"
