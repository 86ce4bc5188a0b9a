#!/usr/bin/env bash
# User-level DP-FedAvg with a population (the README's "User-level DP that
# learns"): 6,500 virtual users, one tiny-shakespeare training speech each
# (of 6,387: 113 serve two users; configs/population/simulate.yaml), about
# PER_ROUND of them
# Poisson-sampled a round, FFA-LoRA (only lora_B trains) at rank 2, 1 local
# step each, ROUNDS rounds. Three runs of the same population, rounds and
# sampling: no DP, DP at a fixed clip norm C, and DP with adaptive clipping
# (C starts at the same value and tracks the median update norm).
# Then a table (final eval loss, gap to no DP, epsilon after the run) and
# plots of eval loss and epsilon per round in docs/img/population_dp_*.svg.
#   scripts/population_dp.sh                 all three runs, then the table
#   RUNS="nodp dp" ROUNDS=10 scripts/population_dp.sh
#   Z=0.65 C=1.6 PER_ROUND=500 OUT=out/population-dp BIN=build/fedpeft
# z is chosen so the accountant's epsilon after ROUNDS rounds is at most 8
# at delta = 1/N^1.1: check with `fedpeft privacy --sampling-rate q
# --noise-multiplier Z --steps ROUNDS --delta D` (q = PER_ROUND / 6500).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${RUNS:-nodp dp adaptive}"
USERS="${USERS:-6500}"
PER_ROUND="${PER_ROUND:-500}"
ROUNDS="${ROUNDS:-20}"
Z="${Z:-0.65}"
C="${C:-1.6}"
LR="${LR:-0.02}"
OUT="${OUT:-out/population-dp}"
BIN="${BIN:-build/fedpeft}"
[[ -x "$BIN" ]] || { echo "population_dp.sh: $BIN not built" >&2; exit 1; }
mkdir -p "$OUT"
fraction=$(python3 -c "print($PER_ROUND / $USERS)")
common=(--set simulation.users="$USERS" --set simulation.executors=1
  --set coordinator.federation.rounds="$ROUNDS"
  --set coordinator.federation.fraction="$fraction"
  --set coordinator.federation.round_deadline_s=1200
  --set coordinator.federation.worker_timeout_s=120
  --set coordinator.federation.seed=1
  --set coordinator.train.local_steps=1
  --set coordinator.train.lr="$LR"
  --set coordinator.peft.lora.r=2 --set coordinator.peft.lora.alpha=4
  --set coordinator.freezing.ffa=true
  --set coordinator.compression.bits=8
  --set coordinator.eval.every=3
  --set coordinator.dp.noise_seed=7)
for run in $RUNS; do
  case "$run" in
    nodp) extra=(--set coordinator.dp.enabled=false) ;;
    dp) extra=(--set coordinator.dp.enabled=true
          --set coordinator.dp.clip_norm="$C"
          --set coordinator.dp.noise_multiplier="$Z") ;;
    adaptive) extra=(--set coordinator.dp.enabled=true
          --set coordinator.dp.clip_norm="$C"
          --set coordinator.dp.noise_multiplier="$Z"
          --set coordinator.dp.adaptive_clipping=true) ;;
    *) echo "population_dp.sh: unknown run '$run'" >&2; exit 2 ;;
  esac
  echo "== $run: $USERS users, ~$PER_ROUND a round (q $fraction), $ROUNDS rounds"
  /usr/bin/time -f "%e s, peak RSS %M KB (simulate)" \
    "$BIN" simulate --config configs/population/simulate.yaml \
    --out "$OUT/$run" "${common[@]}" "${extra[@]}" > "$OUT/$run.log" 2>&1 ||
    { echo "$run failed: see $OUT/$run.log"; tail -5 "$OUT/$run.log"; exit 1; }
  tail -3 "$OUT/$run.log"
done
python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def rows(run):
    p = os.path.join(out, run, "metrics.jsonl")
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
base = rows("nodp")
base_eval = next((r["server_eval_loss"] for r in reversed(base)
                  if r.get("server_eval_loss") is not None), None)
print("| run | rounds | users a round (mean) | final eval | vs no DP | epsilon | delta | C first -> last |")
print("|---|---|---|---|---|---|---|---|")
for run in ["nodp", "dp", "adaptive"]:
    r = rows(run)
    if not r:
        continue
    ev = next((x["server_eval_loss"] for x in reversed(r)
               if x.get("server_eval_loss") is not None), None)
    gap = f"{100 * (ev / base_eval - 1):+.2f}%" if ev and base_eval and run != "nodp" else "-"
    eps = r[-1].get("epsilon")
    delta = r[-1].get("delta")
    cs = [x.get("clip_norm") for x in r if x.get("clip_norm")]
    c = f"{cs[0]:.4g} -> {cs[-1]:.4g}" if cs else "-"
    mean_n = sum(x["answered"] for x in r) / len(r)
    print(f"| {run} | {len(r)} | {mean_n:.0f} | {ev:.4f} | {gap} | "
          f"{eps if eps is None else f'{eps:.2f}'} | "
          f"{delta if delta is None else f'{delta:.3g}'} | {c} |")
EOF
runs=()
for run in nodp dp adaptive; do
  [[ -f "$OUT/$run/metrics.jsonl" ]] && runs+=("$run=$OUT/$run")
done
python3 scripts/plot_metrics.py --out docs/img/population_dp_eval.svg \
  --title "eval loss, $USERS users, ~$PER_ROUND a round" "${runs[@]}"
python3 scripts/plot_metrics.py --out docs/img/population_dp_epsilon.svg \
  --metric epsilon --title "epsilon after each round" "${runs[@]:1}"
