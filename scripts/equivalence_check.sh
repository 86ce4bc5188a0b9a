#!/usr/bin/env bash
# Behaviour-equivalence check for refactors of the round engine.
#
# Runs four short, seeded `fedpeft simulate` federations with a given
# fedpeft binary and writes, per scenario, a compact summary of every round
# from the run's metrics.jsonl; a second mode diffs two such folders field
# by field, so the runs of a binary built before a refactor and of one built
# after it can be shown to agree.
#
# Usage (from anywhere; the runs start in the repository root, so the
# relative paths in configs/ resolve):
#   scripts/equivalence_check.sh BIN OUTDIR
#       runs the scenarios with BIN into OUTDIR/<scenario>/ (simulate's
#       --out: logs/, metrics.jsonl, checkpoints/, adapter/, simulate.txt)
#       and writes OUTDIR/<scenario>.summary and OUTDIR/wall_s.txt.
#       SCENARIOS="flat dp" (env) runs a subset; default: all four.
#   scripts/equivalence_check.sh --compare DIR_A DIR_B
#       diffs DIR_A/<scenario>.summary against DIR_B/<scenario>.summary for
#       every scenario present in either; prints each scenario/round/field
#       that differs (beyond the tolerances below) and exits 1 on any
#       difference (0: every scenario agrees; 2: usage error).
# e.g.
#   scripts/equivalence_check.sh /work/baseline/fedpeft out/eq/before
#   scripts/equivalence_check.sh build/fedpeft out/eq/after
#   scripts/equivalence_check.sh --compare out/eq/before out/eq/after
#
# Scenarios (every one: 3 rounds of 5 local steps, federation seed 1,
# adapter seed 42, data seed 1234 on the workers and the server eval, no
# simulated dropout, no slowdown, generous deadlines and heartbeat timeouts
# so that a slow machine does not drop a worker, no heterogeneous ranks, no
# APF, no sample generation, mutual TLS with throw-away certificates):
#   flat    configs/quickstart.yaml: a coordinator + 4 worker processes,
#           fedavg (the quickstart's slowdown and dropout switched off).
#   hier    configs/experiments/hier_base.yaml + topology.edges=2,
#           simulation.workers=4, coordinator.hierarchy.edge_rounds=2: a
#           cloud + 2 edges x 2 workers, 2 edge rounds per cloud round.
#   dp      configs/dp/simulate.yaml + coordinator.dp.noise_seed=7: a
#           coordinator + 4 workers, DP-FedAvg (FFA-LoRA, clip 0.05, z 0.8,
#           noise at the cloud), 4-bit uploads with error feedback.
#   secagg  configs/secagg/simulate.yaml + coordinator.dp.noise_seed=7 and
#           coordinator.compression.bits=16 (see below): a cloud + 2 edges
#           x 3 workers, secure aggregation at the edges, DP noise shares
#           added at the edges.
#           Since edges stopped receiving dp.noise_seed (their noise is
#           always OpenSSL's DRBG), binaries after commit "DP noise from
#           OpenSSL's DRBG" add unseeded noise here: compare two such
#           binaries with coordinator.dp.noise_multiplier=0 (edit below), or
#           expect this scenario to differ. Under DP those binaries also
#           withhold workers' losses (train_loss null in metrics.jsonl).
# Heterogeneous ranks (heterogeneity.enabled) are off everywhere: ranks are
# re-sized from measured training speed, so they would make the runs
# depend on timing. configs/quickstart.yaml's slowdown/dropout_prob are
# overridden to 1.0/0.0 (dropout is seeded, but a slow worker can still miss
# a deadline on a loaded machine).
#
# Summary (OUTDIR/<scenario>.summary): one line per round attempt from
# metrics.jsonl, values as Python's repr of the JSON value (the exact
# double): round, attempt, aggregated, selected, answered, train_loss,
# eval_loss, server_eval_loss, bytes_up, bytes_down, epsilon,
# sampling_rate, clip_norm, secagg_workers, then dropped, rejected,
# edges_answered, delta, noise_multiplier, unclipped_fraction,
# bytes_up_workers. Timings (seconds, worker_seconds_max, unix_ms) are left
# out. Then one "order round=R" line per round: the order in which updates
# arrived at the coordinator and at each edge (edge rounds separated by
# '|'), read from the "update from '<id>'" lines of logs/coordinator.log
# and logs/edge-*.log (an edge's "cloud round R:" line maps its edge rounds
# to cloud rounds); informational, not compared itself. Last, "final
# adapter_sha256=": the SHA-256 of the exported global adapter
# (adapter/adapter_model.safetensors).
#
# What is exact and what is not (measured: 7 full runs of
# /work/baseline/fedpeft, the code before the coordinator refactor, 21
# pairs, on this loaded 2-core machine):
#   * Exact in every run, compared exactly: round, attempt, aggregated,
#     selected, answered, dropped, rejected, edges_answered, bytes_down,
#     epsilon, delta, sampling_rate, clip_norm, noise_multiplier,
#     secagg_workers, unclipped_fraction.
#   * bytes_up, bytes_up_workers: within SESSION_ID_BYTES = 2 bytes per
#     upload (bytes_up: 2 x answered; bytes_up_workers: 2 per entry). Every
#     upload's header carries the session id "<federation>/<worker>/<hex>",
#     hex = Mix(counter ^ UnixMillis()) printed without leading zeros
#     (coordinator.cc, Coordinator::Register): 1 session in 16 gets an id a
#     byte shorter, 1 in 256 two bytes, from the wall clock. Measured: 1
#     and 2 bytes. (A session 3+ bytes short, 1 in 4096, would be reported
#     as a difference.)
#   * train_loss, eval_loss, server_eval_loss and the adapter: a
#     deterministic function of the seeds and of the ORDER IN WHICH UPDATES
#     ARRIVE at each aggregator. The coordinator and the edges sum updates
#     in arrival order in float32 (Aggregate, WeightedMeanDelta and DpMean,
#     add_ with a weight); float addition is not associative (and with a
#     weighted add_, apparently fused, even two updates do not commute:
#     seen in hier), so another order changes the last bits, and local
#     training amplifies that over the rounds.
#     Arrival order depends on timing (4 worker processes on 2 cores; local
#     compute varied 2-10 s per round on this machine) and no config key
#     fixes it: simulation.slowdown would have to stagger workers by 3x and
#     more. Checked: 2 workers staggered by slowdown [1, 4] (same order in
#     both runs) agree bit for bit, adapter included. So the comparison is
#     exact for rounds whose arrival orders (that round and every round
#     before) are the same in both runs, adapter SHA-256 included when all
#     are; otherwise the losses must agree within a relative ORDER_RTOL per
#     scenario, about 3x the largest difference measured between runs of
#     the baseline (flat 1.1e-7 -> 3e-7, dp 2.8e-7 -> 1e-6, hier 1.0e-5 ->
#     3e-5: 2 edge rounds per cloud round amplify more; the differences
#     grow with the round), and the adapter is not compared. With 4
#     workers the orders almost never repeat, so flat, dp and hier are in
#     practice tolerance comparisons. If the "update from" log lines change
#     (a reworded message), the order is unknown and every round gets the
#     tolerance.
#   * secagg is order-independent and compared exactly (ORDER_RTOL 0),
#     adapter included: workers' updates are summed as fixed-point integers
#     mod 2^32 (exact in any order) and the cloud sums two F16 edge updates
#     times integer worker counts (exact products, so the sum commutes).
#     It agreed bit for bit in every pair although arrival orders differed.
#     That needs compression.bits=16 instead of the shipped 8: the edge's
#     stochastic-rounding generator (coordinator/edge.cc,
#     Edge::Impl::rng_) is seeded from std::random_device and no config key
#     seeds it. Measured with bits=8: server_eval_loss already differs in
#     round 1 (4.636703 vs 4.636664) between two runs of the same binary.
#   * Seeded through config: coordinator.federation.seed (selection and
#     the per-round task seeds, hence workers' data order),
#     coordinator.adapter_seed (the initial adapter), data.seed on the
#     workers and the server eval (splits and shards), dp.noise_seed (0,
#     the default, is std::random_device); simulate seeds each worker's
#     simulation.seed (1000 + i: dropout draws, stochastic rounding of
#     quantized uploads, fixed-point rounding under secure aggregation).
#     Not seedable but harmless here: the download codec's generator
#     (Coordinator::codec_rng_, std::random_device) is drawn from only
#     with compression.download_bits < 16 (every scenario keeps 32);
#     secure-aggregation keys (OpenSSL RAND_bytes) cancel exactly;
#     throw-away TLS certificates; gRPC retry jitter (timing only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ALL_SCENARIOS="flat hier dp secagg"

die() {
  echo "equivalence_check: $*" >&2
  exit 2
}

usage() {  # usage [EXIT_CODE]: the header above, without the '#'
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

# Overrides of every scenario.
COMMON=(
  simulation.sample_tokens=0
  simulation.timeout_s=900
  "simulation.slowdown=[1.0]"
  "simulation.dropout_prob=[0.0]"
  coordinator.federation.rounds=3
  coordinator.federation.seed=1
  coordinator.federation.fraction=1.0
  coordinator.federation.round_deadline_s=600
  coordinator.federation.worker_timeout_s=60
  coordinator.federation.on_quorum_miss=skip
  coordinator.adapter_seed=42
  coordinator.train.local_steps=5
  coordinator.heterogeneity.enabled=false
  coordinator.freezing.apf.enabled=false
  coordinator.eval.data.seed=1234
  worker.data.seed=1234
)
# Edges' deadlines (hier, secagg): at most this, and their share of the
# cloud's deadline.
EDGE=(
  edge.federation.round_deadline_s=300
  edge.federation.worker_timeout_s=60
)

scenario_config() {
  case "$1" in
    flat) echo configs/quickstart.yaml ;;
    hier) echo configs/experiments/hier_base.yaml ;;
    dp) echo configs/dp/simulate.yaml ;;
    secagg) echo configs/secagg/simulate.yaml ;;
    *) die "unknown scenario '$1' (known: $ALL_SCENARIOS)" ;;
  esac
}

scenario_overrides() {
  printf '%s\n' "${COMMON[@]}"
  case "$1" in
    flat)
      printf '%s\n' simulation.workers=4
      ;;
    hier)
      printf '%s\n' simulation.workers=4 topology.edges=2 \
        coordinator.hierarchy.edge_rounds=2 "${EDGE[@]}"
      ;;
    dp)
      printf '%s\n' simulation.workers=4 topology.edges=0 \
        coordinator.dp.noise_seed=7
      ;;
    secagg)
      printf '%s\n' simulation.workers=6 topology.edges=2 \
        coordinator.dp.noise_seed=7 coordinator.compression.bits=16 \
        coordinator.secagg.setup_timeout_s=30 \
        coordinator.secagg.unmask_timeout_s=30 "${EDGE[@]}"
      ;;
  esac
}

# The summaries and the comparison (python3, standard library only).
PY="$(cat <<'EOF'
import hashlib, json, math, os, re, sys

# The per-round fields, in the order they are written.
FIELDS = ["round", "attempt", "aggregated", "selected", "answered",
          "train_loss", "eval_loss", "server_eval_loss", "bytes_up",
          "bytes_down", "epsilon", "sampling_rate", "clip_norm",
          "secagg_workers", "dropped", "rejected", "edges_answered", "delta",
          "noise_multiplier", "unclipped_fraction", "bytes_up_workers"]
# Floating-point results of training and aggregation: a function of the
# seeds and of the order in which updates arrived at each aggregator (see
# the header). Compared exactly while both runs saw the same arrival order
# in that round and every round before it, else within ORDER_RTOL of the
# scenario (relative; about 3x the largest difference measured between
# runs of one binary, see the header). 0: the scenario does not depend on
# the order (secagg): always exact, the adapter too.
ORDER_FIELDS = {"train_loss", "eval_loss", "server_eval_loss"}
ORDER_RTOL = {"flat": 3e-7, "hier": 3e-5, "dp": 1e-6, "secagg": 0.0}
ORDER_RTOL_OTHER = 3e-5
# Uploads carry a session id whose length varies by a byte or two (see the
# header): bytes_up within this many bytes times the uploads of the round
# (`answered`), each entry of bytes_up_workers within this many bytes.
SESSION_ID_BYTES = 2

UPDATE = re.compile(r"\] (?:edge round|round) (\d+): (?:masked )?update from '([^']+)'")
CLOUD_ROUND = re.compile(r"\] '[^']+': cloud round (\d+): \d+ edge rounds")


def show(v):
    if isinstance(v, dict):  # bytes_up_workers: {id: bytes}
        return ",".join(f"{k}:{show(v[k])}" for k in sorted(v)) or "{}"
    return repr(v)


def arrival_orders(run):
    """{cloud round: 'cloud=a,b;edge-0=c,d|d,c;...'} from the logs."""
    orders = {}
    logs = os.path.join(run, "logs")
    try:
        with open(os.path.join(logs, "coordinator.log"), errors="replace") as f:
            for line in f:
                m = UPDATE.search(line)
                if m:
                    orders.setdefault(int(m.group(1)), {}).setdefault(
                        "cloud", [[]])[0].append(m.group(2))
        edges = sorted(n for n in os.listdir(logs) if re.fullmatch(r"edge-\d+\.log", n))
    except OSError:
        return {}
    for name in edges:
        cloud, seen = None, {}
        with open(os.path.join(logs, name), errors="replace") as f:
            for line in f:
                m = CLOUD_ROUND.search(line)
                if m:
                    cloud = int(m.group(1))
                    continue
                m = UPDATE.search(line)
                if m and cloud is not None:
                    per = seen.setdefault(cloud, {})
                    per.setdefault(int(m.group(1)), []).append(m.group(2))
        if not seen:  # an edge log without them: the order is unknown
            return {}
        for cloud, per in seen.items():
            orders.setdefault(cloud, {})[name[:-4]] = [per[k] for k in sorted(per)]
    return {r: ";".join(f"{src}=" + "|".join(",".join(ids) for ids in lists)
                        for src, lists in sorted(v.items()))
            for r, v in orders.items()}


def summarize(run):
    orders = arrival_orders(run)
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            if not line.strip():
                continue
            j = json.loads(line)
            print(" ".join(f"{k}={show(j.get(k, 'absent'))}" for k in FIELDS))
    for r in sorted(orders):
        print(f"order round={r} {orders[r]}")
    path = os.path.join(run, "adapter", "adapter_model.safetensors")
    digest = "absent"
    if os.path.exists(path):
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    print(f"final adapter_sha256={digest}")


def load(path):
    rounds, orders, final = [], {}, {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            head, _, rest = line.partition(" ")
            if head == "order":
                r, _, sig = rest.partition(" ")
                orders[int(r.split("=", 1)[1])] = sig
            elif head == "final":
                final = dict(kv.split("=", 1) for kv in rest.split())
            elif "=" not in head:  # no_metrics: the run wrote none
                rounds.append({"metrics": head})
            else:
                rounds.append(dict(kv.split("=", 1) for kv in line.split()))
    return rounds, orders, final


def as_float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def compare(a_dir, b_dir, order):
    names = {n[:-len(".summary")] for d in (a_dir, b_dir)
             for n in os.listdir(d) if n.endswith(".summary")}
    names = sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
    if not names:
        print(f"no *.summary in {a_dir} or {b_dir}")
        return 2
    total = 0
    for name in names:
        pa, pb = (os.path.join(d, name + ".summary") for d in (a_dir, b_dir))
        missing = [p for p in (pa, pb) if not os.path.exists(p)]
        if missing:
            print(f"{name}: missing {', '.join(missing)}")
            total += 1
            continue
        (ra, oa, fa), (rb, ob, fb) = load(pa), load(pb)
        diffs, exact_rounds, tol_rounds, worst, bytes_off = [], [], [], 0.0, 0
        broken = [p for p, rs in ((pa, ra), (pb, rb)) if any("metrics" in x for x in rs)]
        if broken:
            print(f"{name}: no metrics.jsonl behind {', '.join(broken)}")
            total += 1
            continue
        if len(ra) != len(rb):
            diffs.append(f"{len(ra)} round lines in {pa}, {len(rb)} in {pb}")
        # same[r]: both runs saw the same arrival order in rounds 1..r.
        rtol = ORDER_RTOL.get(name, ORDER_RTOL_OTHER)
        same, ok = {}, True
        for r in sorted(set(oa) | set(ob)):
            ok = ok and r in oa and oa.get(r) == ob.get(r)
            same[r] = ok
        first_diff = next((r for r in sorted(same) if not same[r]), None)
        if rtol == 0:  # order-independent: every round exact
            same = {int(float(x["round"])): True for x in ra + rb if as_float(x.get("round"))}
        for xa, xb in zip(ra, rb):
            rnd = xa.get("round")
            where = f"round {rnd} attempt {xa.get('attempt')}"
            if (rnd, xa.get("attempt")) != (xb.get("round"), xb.get("attempt")):
                where += f" | round {xb.get('round')} attempt {xb.get('attempt')}"
            r = as_float(rnd)
            exact = r is not None and same.get(int(r), False)
            (exact_rounds if exact else tol_rounds).append(rnd)
            for field in list(xa) + [k for k in xb if k not in xa]:
                x, y = xa.get(field, "absent"), xb.get(field, "absent")
                if x == y:
                    continue
                fx, fy = as_float(x), as_float(y)
                note = ""
                if (field in ORDER_FIELDS and not exact and fx is not None
                        and fy is not None and math.isfinite(fx) and math.isfinite(fy)):
                    rel = abs(fx - fy) / max(abs(fx), abs(fy), 1e-300)
                    worst = max(worst, rel)
                    if rel <= rtol:
                        continue
                    note = f" (relative {rel:.2g} > {rtol:g}; arrival order differed)"
                elif field == "bytes_up" and fx is not None and fy is not None:
                    n = max(as_float(xa.get("answered")) or 0, as_float(xb.get("answered")) or 0)
                    if abs(fx - fy) <= SESSION_ID_BYTES * n:
                        bytes_off = max(bytes_off, abs(int(fx - fy)))
                        continue
                    note = f" ({fx - fy:+.0f} B, > {SESSION_ID_BYTES} B x {n:.0f} uploads)"
                elif field == "bytes_up_workers":
                    pa_ = dict(e.rsplit(":", 1) for e in x.split(",") if ":" in e)
                    pb_ = dict(e.rsplit(":", 1) for e in y.split(",") if ":" in e)
                    if pa_.keys() == pb_.keys() and all(
                            abs(int(pa_[k]) - int(pb_[k])) <= SESSION_ID_BYTES for k in pa_):
                        continue
                    note = f" (an entry more than {SESSION_ID_BYTES} B apart)"
                elif field in ORDER_FIELDS:
                    note = (" (order-independent scenario: compared exactly)" if rtol == 0
                            else " (same arrival order: compared exactly)")
                diffs.append(f"{where}: {field}: {x} != {y}{note}")
        last = max((int(float(x["round"])) for x in ra if as_float(x.get("round"))), default=0)
        adapter_same = fa.get("adapter_sha256") == fb.get("adapter_sha256")
        if not adapter_same:
            if same.get(last, False):
                diffs.append(f"final: adapter_sha256: {fa.get('adapter_sha256')} != "
                             f"{fb.get('adapter_sha256')} (same arrival order: compared exactly)")
        for d in diffs:
            print(f"{name}: {d}")
        total += len(diffs)
        if not diffs:
            rng = lambda rs: (f"{rs[0]}-{rs[-1]}" if len(rs) > 1 else rs[0]) if rs else "none"
            if rtol == 0:
                msg = (f"{name}: agree ({len(ra)} rounds, every field exact, adapter identical;"
                       f" order-independent scenario")
                if first_diff:
                    msg += f", arrival order differed from round {first_diff}"
            else:
                msg = f"{name}: agree ({len(ra)} rounds; exact: rounds {rng(exact_rounds)}"
                if tol_rounds:
                    msg += (f"; rounds {rng(tol_rounds)}: arrival order differed"
                            + (f" from round {first_diff}" if first_diff else " or is unknown")
                            + f", losses within relative {rtol:g} (largest {worst:.2g}),"
                            + (" adapter identical" if adapter_same else " adapter not compared"))
                else:
                    msg += "; adapter identical"
            if bytes_off:
                msg += f"; bytes_up up to {bytes_off} B apart (session ids)"
            print(msg + ")")
    if total:
        print(f"DIFFERENT: {total} difference(s)")
        return 1
    print("EQUIVALENT: every scenario, round and field agrees")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "summarize":
        summarize(sys.argv[2])
    else:
        sys.exit(compare(sys.argv[2], sys.argv[3], sys.argv[4].split()))
EOF
)"

# summarize RUN_DIR > SUMMARY
summarize() {
  python3 - summarize "$1" <<<"$PY"
}

run_all() {
  local bin="$1" out="$2"
  [[ -x "$bin" ]] || die "'$bin' is not an executable"
  mkdir -p "$out"
  bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
  out="$(cd "$out" && pwd)"
  cd "$ROOT"
  local scenarios="${SCENARIOS:-$ALL_SCENARIOS}" failed=0 name
  local t_all0 t_all1
  t_all0="$(date +%s.%N)"
  : >"$out/wall_s.txt"
  for name in $scenarios; do
    local config dir
    config="$(scenario_config "$name")"
    dir="$out/$name"
    local sets=() kv
    while IFS= read -r kv; do sets+=(--set "$kv"); done \
      < <(scenario_overrides "$name")
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '%s\n' "$bin simulate --config $config --out $dir" \
      "$(scenario_overrides "$name")" >"$dir/command.txt"
    echo "== $name: $bin simulate --config $config --out $dir (overrides in $dir/command.txt)" >&2
    local t0 t1 rc=0
    t0="$(date +%s.%N)"
    "$bin" simulate --config "$config" --out "$dir" "${sets[@]}" \
      >"$dir/simulate.txt" 2>&1 || rc=$?
    t1="$(date +%s.%N)"
    awk -v n="$name" -v a="$t0" -v b="$t1" \
      'BEGIN { printf "%s %.1f\n", n, b - a }' >>"$out/wall_s.txt"
    if [[ $rc -ne 0 ]]; then
      echo "equivalence_check: $name: simulate exited with $rc; see $dir/simulate.txt and $dir/logs/" >&2
      failed=1
    fi
    if [[ -s "$dir/metrics.jsonl" ]]; then
      summarize "$dir" >"$out/$name.summary" || {
        echo "equivalence_check: $name: cannot summarize $dir/metrics.jsonl" >&2
        echo "no_metrics" >"$out/$name.summary"
        failed=1
      }
    else
      echo "equivalence_check: $name: no metrics.jsonl" >&2
      echo "no_metrics" >"$out/$name.summary"
      failed=1
    fi
    # A dropped worker or a skipped round here is a timing problem of the
    # run (or a real regression): say so, the comparison will show it.
    if grep -q -E 'aggregated=False|dropped=[1-9]|attempt=[1-9]' "$out/$name.summary"; then
      echo "equivalence_check: $name: warning: a round was skipped or retried, or a worker dropped; see $dir/logs/" >&2
    fi
    tail -n 1 "$out/wall_s.txt" | awk '{ printf "   %s s\n", $2 }' >&2
  done
  t_all1="$(date +%s.%N)"
  awk -v a="$t_all0" -v b="$t_all1" 'BEGIN { printf "total %.1f\n", b - a }' \
    >>"$out/wall_s.txt"
  echo "summaries in $out/*.summary; wall times in $out/wall_s.txt" >&2
  return $failed
}

compare() {
  local a="$1" b="$2"
  [[ -d "$a" ]] || die "'$a' is not a folder"
  [[ -d "$b" ]] || die "'$b' is not a folder"
  python3 - compare "$a" "$b" "$ALL_SCENARIOS" <<<"$PY"
}

case "${1:-}" in
  -h | --help) usage 0 ;;
  "") usage ;;
  --compare)
    [[ $# -eq 3 ]] || usage
    compare "$2" "$3"
    ;;
  *)
    [[ $# -eq 2 ]] || usage
    run_all "$1" "$2"
    ;;
esac
