#!/usr/bin/env bash
# The experiments of the "hierarchy and heterogeneity" milestone (results
# and discussion: README.md, "Hierarchy and heterogeneity: experiments").
# Every federation is configs/experiments/hier_base.yaml (8 worker processes,
# tiny-shakespeare by speaker, stories260K, LoRA r=8 on all linear
# projections, 12 cloud rounds of 10 local steps) plus --set overrides:
#
#   edges   flat vs 2 edge aggregators with κ = 1 and κ = 2 edge rounds per
#           cloud round: final server eval loss, bytes at the cloud, time
#   hetero  workers behind slow emulated uplinks under a binding deadline:
#           uniform r_min (r=2) vs heterogeneous ranks in [2, 8] vs uniform
#           r_max (r=8, slow links miss the deadline)
#   apf     adaptive parameter freezing on (several thresholds and warmups)
#           vs off: upload bytes and final eval loss
#   layers  layer freezing: the C++ train step with the top K layers
#           trainable (bench/bench_train.cc --trainable-layers), and one
#           federation with worker.train.trainable_layers=2
#   plot    docs/img/hier_*.svg (scripts/plot_metrics.py)
#   table   Markdown tables of every finished run to $OUT/summary.md
#
#   scripts/experiments_hier.sh                 # everything, in that order
#   scripts/experiments_hier.sh apf table       # some stages
#
# Environment (defaults):
#   FEDPEFT_BIN=build/fedpeft    the executable (run from the source tree)
#   BENCH_BUILD_DIR=build        where fedpeft_bench_train is (built if absent)
#   OUT=out/experiments/hier     one folder per run: metrics.jsonl, logs/,
#                                wall_s (the whole simulate command, seconds)
#   REPEATS=5                    bench runs per preset and K (interleaved)
#   PRESETS="stories260K llama-512x8"
#   FORCE=                       1: rerun runs that already have metrics
#   OMP_WAIT_POLICY=PASSIVE      see bench/README.md
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${FEDPEFT_BIN:-build/fedpeft}"
BENCH_BUILD_DIR="${BENCH_BUILD_DIR:-build}"
OUT="${OUT:-out/experiments/hier}"
REPEATS="${REPEATS:-5}"
PRESETS="${PRESETS:-stories260K llama-512x8}"
BASE=configs/experiments/hier_base.yaml
ALL_LINEAR=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY-PASSIVE}"
[[ -n "$OMP_WAIT_POLICY" ]] || unset OMP_WAIT_POLICY

die() { echo "experiments_hier.sh: $*" >&2; exit 1; }
[[ -x "$BIN" ]] || die "$BIN is not built (set FEDPEFT_BIN)"
mkdir -p "$OUT"

# shellcheck source=scripts/experiments_lib.sh
source scripts/experiments_lib.sh  # run NAME KEY=VALUE...

# --- 1. flat vs edges ---------------------------------------------------------
stage_edges() {
  run flat
  run edges2_k1 topology.edges=2 coordinator.hierarchy.edge_rounds=1
  run edges2_k2 topology.edges=2 coordinator.hierarchy.edge_rounds=2
  # The same three again, back to back, for a second reading of wall time
  # (the losses repeat to 4 decimals; the times depend on the machine's load).
  run flat_rep2
  run edges2_k1_rep2 topology.edges=2 coordinator.hierarchy.edge_rounds=1
  run edges2_k2_rep2 topology.edges=2 coordinator.hierarchy.edge_rounds=2
}

# --- 2. heterogeneous ranks under a binding deadline --------------------------
# Three workers behind slow links (0.05, 0.1 and 0.2 Mbit/s, emulated: the
# worker sleeps as long as its download + upload would take), two slower
# CPUs, and a 40 s deadline. Both ways, the r=8 adapter (191 KB) takes 61 s
# on the 0.05 Mbit/s link and 31 s on the 0.1 one, plus 5-15 s of compute on
# this shared machine; r=2 (52 KB) takes 17 s and 8 s.
HETERO=(
  "simulation.uplink_mbps=[0.05,0.1,0.2,0,0,0,0,0]"
  "simulation.slowdown=[1,1,1,1,1,1,1.5,2]"
  worker.simulation.emulate_uplink=true
  coordinator.federation.round_deadline_s=40
)
stage_hetero() {
  run uniform_rmin "${HETERO[@]}" coordinator.peft.lora.r=2
  run hetero "${HETERO[@]}" coordinator.heterogeneity.enabled=true \
    coordinator.heterogeneity.r_min=2 coordinator.peft.lora.r=8
  run uniform_rmax "${HETERO[@]}" coordinator.peft.lora.r=8
  run hetero_svd "${HETERO[@]}" coordinator.heterogeneity.enabled=true \
    coordinator.heterogeneity.method=svd coordinator.heterogeneity.r_min=2 \
    coordinator.peft.lora.r=8
}

# --- 3. adaptive parameter freezing --------------------------------------------
# apf NAME THRESHOLD WARMUP PERIOD_STEP EMA [KEY=VALUE...]: one APF run. The
# tuning tried, in order (README.md has the outcome of each); off = "flat".
apf() {
  local name="$1" t="$2" w="$3" step="$4" ema="$5"
  shift 5
  run "$name" coordinator.freezing.apf.enabled=true \
    coordinator.freezing.apf.threshold="$t" \
    coordinator.freezing.apf.warmup_rounds="$w" \
    coordinator.freezing.apf.period_step="$step" \
    coordinator.freezing.apf.ema="$ema" "$@"
}
stage_apf() {
  run flat
  apf apf_t03_w2 0.3 2 1 0.9
  apf apf_t05_w2 0.5 2 1 0.9
  apf apf_t05_w3 0.5 3 1 0.9
  apf apf_t07_w2 0.7 2 1 0.9
  apf apf_t09_w2 0.9 2 1 0.9
  apf apf_t05_w2_s3 0.5 2 3 0.9
  apf apf_t07_w2_s3 0.7 2 3 0.9
  apf apf_t05_w2_e05 0.5 2 1 0.5
  apf apf_t06_w2 0.6 2 1 0.9
  apf apf_t07_w3 0.7 3 1 0.9
  apf apf_t07_w2_m1 0.7 2 1 0.9 coordinator.freezing.apf.max_period=1
  # A longer horizon: does the loss gap close once frozen tensors settle?
  run flat_r24 coordinator.federation.rounds=24
  apf apf_t07_w2_r24 0.7 2 1 0.9 coordinator.federation.rounds=24
}

# --- 4. layer freezing --------------------------------------------------------
stage_layers() {
  run layers_k2 worker.train.trainable_layers=2
  local bench="$BENCH_BUILD_DIR/bench/fedpeft_bench_train"
  if [[ ! -x "$bench" ]]; then
    [[ -f "$BENCH_BUILD_DIR/build.ninja" ]] ||
      cmake -S . -B "$BENCH_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >&2
    ninja -C "$BENCH_BUILD_DIR" fedpeft_bench_train >&2
  fi
  local raw="$OUT/layers_bench.txt" order preset r k steps
  : >"$raw"
  for preset in $PRESETS; do
    case "$preset" in
      stories260K) steps="--steps 10 --warmup 3" ;;
      *) steps="--steps 5 --warmup 2" ;;
    esac
    for ((r = 1; r <= REPEATS; r++)); do
      # Rotate the order of K so drift in machine load spreads evenly.
      case $((r % 3)) in
        1) order="0 2 1" ;;
        2) order="2 1 0" ;;
        0) order="1 0 2" ;;
      esac
      for k in $order; do
        echo "== bench $preset K=$k repeat $r/$REPEATS" >&2
        OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$bench" --preset "$preset" \
          --threads 1 $steps --targets "$ALL_LINEAR" --trainable-layers "$k" \
          2>/dev/null | sed "s/\$/ repeat=$r/" | tee -a "$raw" >&2
      done
    done
  done
}

# --- plots --------------------------------------------------------------------
stage_plot() {
  local p="python3 scripts/plot_metrics.py" o="$OUT"
  $p --out docs/img/hier_edges_eval.svg --xlabel "edge rounds (local training rounds)" \
    --title "Flat vs 2 edges: server eval loss" \
    flat="$o/flat" "2 edges, κ=1"="$o/edges2_k1" "2 edges, κ=2"="$o/edges2_k2:2"
  $p --out docs/img/hier_edges_bytes.svg --metric bytes_up --cumulative \
    --title "Flat vs 2 edges: bytes uploaded to the cloud" \
    flat="$o/flat" "2 edges, κ=1"="$o/edges2_k1" "2 edges, κ=2"="$o/edges2_k2"
  $p --out docs/img/hier_hetero_eval.svg \
    --title "Heterogeneous ranks under a 40 s deadline: server eval loss" \
    "uniform r=2"="$o/uniform_rmin" "hetero r∈[2,8], zero_pad"="$o/hetero" \
    "uniform r=8"="$o/uniform_rmax" "hetero r∈[2,8], svd"="$o/hetero_svd"
  $p --out docs/img/hier_hetero_time.svg --x seconds \
    --title "Heterogeneous ranks under a 40 s deadline: eval loss over time" \
    "uniform r=2"="$o/uniform_rmin" "hetero r∈[2,8], zero_pad"="$o/hetero" \
    "uniform r=8"="$o/uniform_rmax" "hetero r∈[2,8], svd"="$o/hetero_svd"
  local apf_runs=(off="$o/flat" "threshold 0.5"="$o/apf_t05_w2"
    "threshold 0.6"="$o/apf_t06_w2" "threshold 0.7"="$o/apf_t07_w2"
    "threshold 0.9"="$o/apf_t09_w2")
  $p --out docs/img/hier_apf_eval.svg --title "APF (warmup 2): server eval loss" \
    "${apf_runs[@]}"
  $p --out docs/img/hier_apf_bytes.svg --metric bytes_up --cumulative \
    --title "APF (warmup 2): cumulative upload bytes" "${apf_runs[@]}"
  $p --out docs/img/hier_apf_r24.svg \
    --title "APF over 24 rounds: server eval loss" \
    off="$o/flat_r24" "threshold 0.7"="$o/apf_t07_w2_r24"
}

# --- tables -------------------------------------------------------------------
stage_table() {
  python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, os, statistics, sys
out = sys.argv[1]

def load(name):
    d = os.path.join(out, name)
    try:
        rows = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if l.strip()]
        wall = float(open(os.path.join(d, "wall_s")).read())
    except (OSError, ValueError):
        return None
    return rows, wall

def num(v, f="{:.4f}"):
    return f.format(v) if isinstance(v, (int, float)) else "n/a"

def kib(b):
    return f"{b / 1024:.1f}"

def summary(rows):
    agg = [r for r in rows if r.get("aggregated", True)]
    last = rows[-1]
    return dict(
        rounds=len(rows), aggregated=len(agg),
        final=last.get("server_eval_loss"),
        best=min((r["server_eval_loss"] for r in rows
                  if isinstance(r.get("server_eval_loss"), (int, float))), default=None),
        up=sum(r.get("bytes_up", 0) for r in rows),
        down=sum(r.get("bytes_down", 0) for r in rows),
        up_round=statistics.median(r.get("bytes_up", 0) for r in rows),
        down_round=statistics.median(r.get("bytes_down", 0) for r in rows),
        secs=sum(r.get("seconds", 0) for r in rows),
        round_s=statistics.median(r.get("seconds", 0) for r in rows),
        answered=sum(r.get("answered", 0) for r in rows),
        selected=sum(r.get("selected", 0) for r in rows),
        dropped=sum(r.get("dropped", 0) for r in rows))

def table(title, names, cols):
    print(f"### {title}\n")
    print("| run | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for n in names:
        got = load(n)
        if not got:
            continue
        rows, wall = got
        s = summary(rows)
        s["wall"] = wall
        print(f"| {n} | " + " | ".join(f(s, rows) for _, f in cols) + " |")
    print()

base_cols = [
    ("cloud rounds", lambda s, r: str(s["rounds"])),
    ("final server eval", lambda s, r: num(s["final"])),
    ("best server eval", lambda s, r: num(s["best"])),
]
table("1. Flat vs 2 edges", ["flat", "edges2_k1", "edges2_k2", "flat_rep2", "edges2_k1_rep2", "edges2_k2_rep2"], base_cols + [
    ("edges answered", lambda s, r: num(statistics.median(x.get("edges_answered", 0) for x in r), "{:g}")),
    ("up KiB / cloud round", lambda s, r: kib(s["up_round"])),
    ("down KiB / cloud round", lambda s, r: kib(s["down_round"])),
    ("up MiB total", lambda s, r: f"{s['up'] / 1048576:.2f}"),
    ("median cloud round s", lambda s, r: f"{s['round_s']:.1f}"),
    ("wall s", lambda s, r: f"{s['wall']:.0f}"),
])
def ranks(s, r):
    mins = [x["rank_min"] for x in r if x.get("rank_max")]
    if not mins:
        return "n/a"
    return (f"{min(mins)} / {statistics.mean(x['rank_mean'] for x in r if x.get('rank_max')):.2f}"
            f" / {max(x['rank_max'] for x in r if x.get('rank_max'))}")
table("2. Ranks under a binding deadline", ["uniform_rmin", "hetero", "uniform_rmax", "hetero_svd"], base_cols + [
    ("answered / selected", lambda s, r: f"{s['answered']}/{s['selected']}"),
    ("rank min / mean / max", ranks),
    ("up MiB total", lambda s, r: f"{s['up'] / 1048576:.2f}"),
    ("median round s", lambda s, r: f"{s['round_s']:.1f}"),
    ("wall s", lambda s, r: f"{s['wall']:.0f}"),
])
apf = ["flat"] + sorted(n for n in os.listdir(out) if n.startswith("apf_") and not n.endswith("_r24"))
apf += ["flat_r24"] + sorted(n for n in os.listdir(out) if n.startswith("apf_") and n.endswith("_r24"))
def vs_flat(key):
    def f(s, r):
        # The off run with as many rounds (flat or flat_r24).
        flat = load("flat_r24" if len(r) == 24 else "flat")
        if not flat:
            return "n/a"
        b = summary(flat[0])[key]
        return f"{(s[key] / b - 1) * 100:+.1f}%" if b else "n/a"
    return f
table("3. APF", apf, base_cols + [
    ("up MiB total", lambda s, r: f"{s['up'] / 1048576:.2f}"),
    ("up vs off", vs_flat("up")),
    ("final eval vs off", vs_flat("final")),
    ("frozen fraction per round", lambda s, r: " ".join(num(x.get("frozen_fraction"), "{:.2f}") for x in r)),
])
table("4a. Layer freezing (federation)", ["flat", "flat_rep2", "layers_k2"], base_cols + [
    ("up KiB / round", lambda s, r: kib(s["up_round"])),
    ("median round s", lambda s, r: f"{s['round_s']:.1f}"),
    ("wall s", lambda s, r: f"{s['wall']:.0f}"),
])

raw = os.path.join(out, "layers_bench.txt")
if os.path.exists(raw):
    runs = {}
    for line in open(raw):
        kv = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "step_ms_median" in kv:
            runs.setdefault(kv["preset"], {}).setdefault(int(kv["trainable_layers"]), []).append(kv)
    print("### 4b. Layer freezing: C++ train step, 1 thread, LoRA r=8 on all linear projections\n")
    print("| preset | batch x seq | trainable layers | trained params | step ms (median) | vs all layers | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for preset, by_k in runs.items():
        full = {r["repeat"]: float(r["step_ms_median"]) for r in by_k.get(0, [])}
        for k in sorted(by_k, key=lambda k: (k != 0, -k)):
            rs = by_k[k]
            ratios = [float(r["step_ms_median"]) / full[r["repeat"]] for r in rs if r["repeat"] in full]
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "n/a"
            print(f"| {preset} | {rs[0]['batch']} x {rs[0]['seq']} | {k if k else 'all'} "
                  f"| {rs[0]['trainable_params']} | {statistics.median(float(r['step_ms_median']) for r in rs):.1f} "
                  f"| {ratio} | {statistics.median(float(r['peak_rss_mb']) for r in rs):.0f} |")
    print(f"\nMedians over {max(len(v) for b in runs.values() for v in b.values())} runs; "
          "the ratio is the median of per-repeat ratios (range).")
EOF
}

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(edges hetero apf layers plot table)
for s in "${stages[@]}"; do
  case "$s" in
    edges | hetero | apf | layers | plot | table) "stage_$s" ;;
    *) die "unknown stage '$s' (edges hetero apf layers plot table)" ;;
  esac
done
