#!/usr/bin/env bash
# The engine's figures for populations of virtual users (the README's
# "Populations of virtual users"): for each N, `simulate` in mode virtual
# (configs/population/simulate.yaml: one user per tiny-shakespeare speech,
# users past the 6,387 training speeches repeating them with their own
# seeds) with about PER_ROUND users Poisson-sampled a round, 1 local step of
# batch 8 each. Prints, per N: wall time of the rounds, the coordinator's
# and the executors' peak RSS, users trained, the time per user in the
# executors and the local training in it (the difference is the per-user
# overhead: download, tokenizing, update building, upload), users per hour.
#   scripts/population.sh                      N = 1000 10000 100000
#   NS="10000" PER_ROUND=1000 scripts/population.sh
#   ROUNDS=1 EXECUTORS=1 OUT=out/population BIN=build/fedpeft
#   EXTRA="--set topology.edges=2" (any more simulate overrides)
set -euo pipefail
cd "$(dirname "$0")/.."
NS="${NS:-1000 10000 100000}"
PER_ROUND="${PER_ROUND:-200}"
ROUNDS="${ROUNDS:-2}"
EXECUTORS="${EXECUTORS:-1}"
OUT="${OUT:-out/population}"
BIN="${BIN:-build/fedpeft}"
EXTRA="${EXTRA:-}"
[[ -x "$BIN" ]] || { echo "population.sh: $BIN not built" >&2; exit 1; }
echo "| users N | per round | rounds | wall s | coordinator RSS MiB | executors RSS MiB | users trained | ms/user | of it training ms | users/hour |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for n in $NS; do
  out="$OUT-$n"
  rm -rf "$out"
  mkdir -p "$(dirname "$out")"
  fraction=$(python3 -c "print(min(1.0, $PER_ROUND / $n))")
  set +e
  # shellcheck disable=SC2086
  "$BIN" simulate --config configs/population/simulate.yaml --out "$out" \
    --set simulation.users="$n" --set simulation.executors="$EXECUTORS" \
    --set coordinator.federation.rounds="$ROUNDS" \
    --set coordinator.federation.fraction="$fraction" \
    --set coordinator.federation.round_deadline_s=3000 \
    --set coordinator.federation.worker_timeout_s=120 \
    --set coordinator.train.local_steps=1 \
    --set coordinator.eval.every=1000 $EXTRA > "$out.log" 2>&1
  rc=$?
  set -e
  if [[ $rc -ne 0 ]]; then
    echo "| $n | failed (exit $rc): see $out.log |"
    continue
  fi
  python3 - "$out" "$n" "$PER_ROUND" "$ROUNDS" <<'EOF'
import json, re, sys, glob
out, n, per_round, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = [json.loads(l) for l in open(out + "/metrics.jsonl") if l.strip()]
wall = sum(r["seconds"] for r in rows)
coord = open(out + "/logs/coordinator.log").read()
m = re.search(r"peak RSS (\d+) MiB", coord)
coord_rss = m.group(1) if m else "?"
trained = 0; rss = []; user_ms = []; train_ms = []
for f in sorted(glob.glob(out + "/logs/executor-*.log")):
    t = open(f).read()
    m = re.search(r"(\d+) users trained, (\d+) rejected.*per user ([\d.]+) ms, "
                  r"of which ([\d.]+) ms local training; peak RSS (\d+) MiB", t)
    if not m:
        continue
    k = int(m.group(1)) + int(m.group(2))
    trained += int(m.group(1)); rss.append(m.group(5))
    user_ms.append((float(m.group(3)), k)); train_ms.append((float(m.group(4)), k))
def mean(v):
    total = sum(k for _, k in v)
    return sum(x * k for x, k in v) / total if total else float("nan")
print(f"| {n} | {per_round} | {rounds} | {wall:.0f} | {coord_rss} | {' + '.join(rss)} | "
      f"{trained} | {mean(user_ms):.0f} | {mean(train_ms):.0f} | "
      f"{trained / wall * 3600:.0f} |")
EOF
done
