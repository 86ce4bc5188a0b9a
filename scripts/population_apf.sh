#!/usr/bin/env bash
# Adaptive parameter freezing over a long run of a population (the README's
# "APF over a long run"): 6,500 virtual users (configs/population/
# simulate.yaml), ~PER_ROUND a round, ROUNDS rounds of 1 local step each,
# LoRA r=4 on all linear projections, fp32 uploads; APF off, then on at
# each threshold in THRESHOLDS. Prints upload bytes and final eval per run,
# and the saving and eval gap against APF off.
#   scripts/population_apf.sh
#   ROUNDS=60 PER_ROUND=200 THRESHOLDS="0.3 0.5" WARMUP=3 OUT=out/population-apf
# (default thresholds: 0.3 0.4 0.45 0.5, the README's table)
# A run whose metrics.jsonl exists is kept (same settings assumed); RERUN=1
# runs everything again.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-60}"
PER_ROUND="${PER_ROUND:-200}"
THRESHOLDS="${THRESHOLDS:-0.3 0.4 0.45 0.5}"
WARMUP="${WARMUP:-3}"
OUT="${OUT:-out/population-apf}"
BIN="${BIN:-build/fedpeft}"
[[ -x "$BIN" ]] || { echo "population_apf.sh: $BIN not built" >&2; exit 1; }
mkdir -p "$OUT"
fraction=$(python3 -c "print($PER_ROUND / 6500)")
common=(--set simulation.users=6500 --set simulation.executors=1
  --set coordinator.federation.rounds="$ROUNDS"
  --set coordinator.federation.fraction="$fraction"
  --set coordinator.federation.round_deadline_s=600
  --set coordinator.federation.worker_timeout_s=120
  --set coordinator.federation.seed=1
  --set coordinator.train.local_steps=1 --set coordinator.train.lr=0.01
  --set coordinator.compression.bits=32
  --set coordinator.eval.every=10)
run() {
  local name="$1"; shift
  if [[ -f "$OUT/$name/metrics.jsonl" && "${RERUN:-0}" != 1 ]]; then
    echo "== $name: kept from an earlier run (RERUN=1 runs it again)"
    return
  fi
  echo "== $name"
  "$BIN" simulate --config configs/population/simulate.yaml \
    --out "$OUT/$name" "${common[@]}" "$@" > "$OUT/$name.log" 2>&1 ||
    { echo "$name failed: see $OUT/$name.log"; tail -5 "$OUT/$name.log"; exit 1; }
}
run off
for t in $THRESHOLDS; do
  run "apf-$t" --set coordinator.freezing.apf.enabled=true \
    --set coordinator.freezing.apf.threshold="$t" \
    --set coordinator.freezing.apf.warmup_rounds="$WARMUP"
done
python3 - "$OUT" $THRESHOLDS <<'EOF'
import json, os, sys
out, thresholds = sys.argv[1], sys.argv[2:]
def load(name):
    return [json.loads(l) for l in open(os.path.join(out, name, "metrics.jsonl")) if l.strip()]
def last_eval(rows):
    return next(r["server_eval_loss"] for r in reversed(rows) if r.get("server_eval_loss") is not None)
base = load("off")
b_up, b_eval = sum(r["bytes_up"] for r in base), last_eval(base)
print("| run | rounds | up MiB | saving | final eval | vs off | frozen share, last round |")
print("|---|---|---|---|---|---|---|")
print(f"| APF off | {len(base)} | {b_up / 2**20:.1f} | - | {b_eval:.4f} | - | 0% |")
for t in thresholds:
    rows = load(f"apf-{t}")
    up, ev = sum(r["bytes_up"] for r in rows), last_eval(rows)
    print(f"| APF, threshold {t} | {len(rows)} | {up / 2**20:.1f} | "
          f"{100 * (1 - up / b_up):.1f}% | {ev:.4f} | {100 * (ev / b_eval - 1):+.2f}% | "
          f"{100 * rows[-1]['frozen_fraction']:.0f}% |")
EOF
