#!/usr/bin/env bash
# The experiments of the "privacy and compression" milestone (results and
# discussion: README.md, "Privacy and compression: experiments"). Every
# federation is configs/experiments/privacy_base.yaml (8 worker processes,
# tiny-shakespeare by speaker, stories260K, LoRA r=8 on all linear
# projections, 8 rounds of 10 local steps, q = 1, fixed seeds) plus --set
# overrides:
#
#   compress  no DP: fp32 (twice, federation.seed 1 and 2: the noise floor)
#             vs 16/8/4/2-bit uploads (block 256) and 4-bit with error
#             feedback: upload bytes and final server eval loss
#   norms     3 rounds with DP on, z = 0 and C = 1000 (nothing clipped): the
#             pre-clip update norms of FFA-LoRA in the worker logs, to pick C
#   dp        user-level DP-FedAvg (FFA-LoRA, C = 2, delta = 1e-5, 8-bit
#             uploads, 4 rounds): noise multiplier z in {0, 0.3, 1, 3}, and
#             adaptive clipping at z = 1
#   edges     DP noise added in shares at 2 edges vs centrally (z = 1)
#   plot      docs/img/privacy_*.svg (scripts/plot_metrics.py)
#   table     Markdown tables of every finished run to $OUT/summary.md
#             (scripts/privacy_tables.py)
#
#   scripts/experiments_privacy.sh              # everything, in that order
#   scripts/experiments_privacy.sh dp table     # some stages
#
# Environment (defaults):
#   FEDPEFT=build/fedpeft         the executable (run from the source tree)
#   OUT=out/experiments/privacy   one folder per run: metrics.jsonl, logs/,
#                                 wall_s (the whole simulate command, seconds)
#   FORCE=                        1: rerun runs that already have metrics
#   OMP_WAIT_POLICY=PASSIVE       see bench/README.md
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN="${FEDPEFT:-build/fedpeft}"
OUT="${OUT:-out/experiments/privacy}"
BASE=configs/experiments/privacy_base.yaml
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY-PASSIVE}"
[[ -n "$OMP_WAIT_POLICY" ]] || unset OMP_WAIT_POLICY

die() { echo "experiments_privacy.sh: $*" >&2; exit 1; }
[[ -x "$BIN" ]] || die "$BIN is not built (set FEDPEFT)"
mkdir -p "$OUT"

# shellcheck source=scripts/experiments_lib.sh
source scripts/experiments_lib.sh  # run NAME KEY=VALUE...

# --- 1. compressed uploads, no DP ----------------------------------------------
C=coordinator.compression
stage_compress() {
  run fp32
  run bits4 $C.bits=4
  run bits4_ef $C.bits=4 $C.error_feedback=true
  # The same fp32 federation with another seed (other batches): the
  # run-to-run noise floor of the final eval loss.
  run fp32_seed2 coordinator.federation.seed=2
  run bits8 $C.bits=8
  run bits2 $C.bits=2
  run bits16 $C.bits=16
}

# --- 2. user-level DP ---------------------------------------------------------
D=coordinator.dp
stage_norms() {
  run probe_norms $D.enabled=true $D.noise_multiplier=0 $D.clip_norm=1000 \
    coordinator.federation.rounds=3
}
# C = 2: the pre-clip update norms of FFA-LoRA in rounds 1-3 were 2.2-2.8
# (stage norms: $OUT/probe_norms, see README.md), so C = 2 clips every
# update to norm 2 (a 0.7-0.9 rescale in rounds 1-3) and wastes no noise on
# headroom. delta = 1e-5 (the base config), q = 1.
# Uploads are 8-bit (stochastic rounding) in every DP run: with fp32 uploads
# a clipped update whose float32 norm lands a rounding error above C is
# never accepted by the worker's encode check (EncodeUpdate's shrink factor
# rounds to 1; "could not encode the update within the clip norm 2.000000
# (decoded norm 2.000000)"), so that worker retrains until the round
# deadline and is dropped. 8-bit costs 0.001% of eval loss (stage compress).
# 4 rounds, not 8: the machine's load (load average 20+ from other jobs)
# pushed rounds to 60-130 s while this stage ran; rounds 1-4 of an 8-round
# run are the same federation (nothing here depends on the round count).
DP=("$D.enabled=true" "$C.bits=8" coordinator.federation.rounds=4)
stage_dp() {
  run dp_z0 "${DP[@]}" $D.noise_multiplier=0
  run dp_z3 "${DP[@]}" $D.noise_multiplier=3
  # Adaptive clipping (median, from C = 2): the count of unclipped updates
  # gets noise count_stddev, paid for out of z; it must exceed z/2 (the
  # default, users / 20 = 0.4, does not with 8 users). count_stddev = 1:
  # the noised unclipped fraction is off by 1/8 a round, and the noise on the
  # update sum rises from z = 1 to (1 - 1/(2*1)^2)^-1/2 = 1.155.
  run dp_adaptive_z1 "${DP[@]}" $D.noise_multiplier=1 \
    $D.adaptive_clipping=true $D.count_stddev=1
  run dp_z0.3 "${DP[@]}" $D.noise_multiplier=0.3
  run dp_z1 "${DP[@]}" $D.noise_multiplier=1
}

# --- 3. noise at the edges ----------------------------------------------------
stage_edges() {
  run dp_z1_edges2 "${DP[@]}" $D.noise_multiplier=1 $D.placement=edges \
    topology.edges=2
}

# --- plots --------------------------------------------------------------------
# plot ARGS... -- LABEL=DIR...: scripts/plot_metrics.py with the runs that
# finished (a stage cut short still gets its plots).
plot() {
  local args=() runs=()
  while [[ "$1" != "--" ]]; do args+=("$1"); shift; done
  shift
  for r in "$@"; do
    [[ -s "${r##*=}/metrics.jsonl" ]] && runs+=("$r")
  done
  [[ ${#runs[@]} -gt 0 ]] || return 0
  python3 scripts/plot_metrics.py "${args[@]}" "${runs[@]}"
}
stage_plot() {
  local o="$OUT"
  plot --out docs/img/privacy_compress_eval.svg \
    --title "Quantized uploads (no DP): server eval loss" -- \
    fp32="$o/fp32" "fp32, seed 2"="$o/fp32_seed2" 16-bit="$o/bits16" \
    8-bit="$o/bits8" 4-bit="$o/bits4" "4-bit + EF"="$o/bits4_ef" \
    2-bit="$o/bits2"
  plot --out docs/img/privacy_compress_gap.svg --relative-to "$o/fp32" \
    --title "Quantized uploads: eval loss difference from fp32 (seed 1)" -- \
    "fp32, seed 2"="$o/fp32_seed2" 16-bit="$o/bits16" 8-bit="$o/bits8" \
    4-bit="$o/bits4" "4-bit + EF"="$o/bits4_ef" 2-bit="$o/bits2"
  plot --out docs/img/privacy_compress_bytes.svg --metric bytes_up --bars \
    --title "Quantized uploads: total bytes uploaded (8 rounds)" -- \
    fp32="$o/fp32" 16-bit="$o/bits16" 8-bit="$o/bits8" 4-bit="$o/bits4" \
    "4+EF"="$o/bits4_ef" 2-bit="$o/bits2"
  plot --out docs/img/privacy_dp_eval.svg \
    --title "User-level DP (8 users, C=2, δ=1e-5): server eval loss" -- \
    "no DP"="$o/fp32" "z=0 (clip only)"="$o/dp_z0" "z=0.3"="$o/dp_z0.3" \
    "z=1"="$o/dp_z1" "z=3"="$o/dp_z3" "z=1, adaptive C"="$o/dp_adaptive_z1" \
    "z=1, noise at 2 edges"="$o/dp_z1_edges2"
  plot --out docs/img/privacy_dp_epsilon.svg --metric epsilon \
    --title "Privacy spent: ε at δ=1e-5 after each round (q=1)" -- \
    "z=0.3"="$o/dp_z0.3" "z=1"="$o/dp_z1" "z=3"="$o/dp_z3" \
    "z=1, adaptive C"="$o/dp_adaptive_z1"
}

# --- tables -------------------------------------------------------------------
stage_table() {
  python3 scripts/privacy_tables.py "$OUT" | tee "$OUT/summary.md"
}

stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(compress norms dp edges plot table)
for s in "${stages[@]}"; do
  case "$s" in
    compress | norms | dp | edges | plot | table) "stage_$s" ;;
    *) die "unknown stage '$s' (compress norms dp edges plot table)" ;;
  esac
done
