#!/usr/bin/env bash
# Model-distributed inference (serve/pipeline_head.h, recurrent pipeline
# parallelism, issue 18) on a realistic model: a random-weight float32 model
# with the real config of Qwen2.5-0.5B (default; 24 layers and a tied
# 151936 x 896 embedding) and Qwen3's tokenizer.json, greedy
# /v1/completions of TOKENS new tokens, S requests at once (request i gets
# prompt i), each row the median of REPEATS runs:
#   1 stage on 1 core (pipeline.stages 1: the same code in one process)
#   vs 2 stages on 2 cores (head on core 0, stage 1 on core 1), for each S
#   of SIZES: tokens/s of all S together, the ratio (target: >= 1.7x at
#   S >= 2), and each stage's busy fraction over the run (the bubble:
#   busy_seconds deltas from `fedpeft status --pipeline`)
#   two cores' ceiling: two independent 1-stage processes, one per core,
#   BOUND_S requests split between them (decode streams weights from
#   memory; what both cores share bounds any 2-core speed-up)
#   weights and peak RSS of each stage next to the single process's
#   S = SLOW_S through 2 stages with stage 1 in a network namespace behind a
#   veth pair, unshaped and then shaped both ways to each of RATES Mbit/s
#   with tc tbf (root, iproute2; skipped with a message where impossible;
#   a rate at which the ring fails, e.g. 0.1 with the default 3 s
#   pipeline.stage_timeout_ms, is reported and ends that part)
# Every completion must equal the same prompt's through the 1-stage ring,
# in every run and at every S and link speed, and the first GEN_PROMPTS
# must equal `fedpeft generate --threads 1`: the script prints
# "outputs identical: yes/no" and exits 1 on a mismatch.
#
# Usage: scripts/bench_pipeline.sh   (env: MODEL=qwen2.5-0.5b TOKENS=16
#   REPEATS=3 SIZES="1 2 4 8" SPLIT=7,17 (layers per stage; auto = the
#   head's split by measured speed) SKIP_SLOW_LINK=0 RATES="1000 100 10 1"
#   SLOW_S=4 BOUND_S=4 (0: no ceiling row) GEN_PROMPTS=2 BIN=build/fedpeft;
#   ~10 min on 2 quiet cores with the defaults, ~2.5 min with TOKENS=4
#   REPEATS=1 SIZES="1 2")
# Logs and JSON results: out/bench_pipeline/run/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${BIN:-build/fedpeft}"
model="${MODEL:-qwen2.5-0.5b}"
tokens="${TOKENS:-16}"
repeats="${REPEATS:-3}"
sizes="${SIZES:-1 2 4 8}"
split="${SPLIT:-7,17}"
rates="${RATES:-1000 100 10 1}"
slow_s="${SLOW_S:-4}"
bound_s="${BOUND_S:-4}"
gen_prompts="${GEN_PROMPTS:-2}"
tokenizer="${TOKENIZER:-../shared/assets/tokenizers/qwen3/tokenizer.json}"
out="out/bench_pipeline"
res="$out/run"
client=(python3 scripts/bench_pipeline_client.py)
heartbeat_ms=200
settle=0.6  # s of idle before a status snapshot: > 2 heartbeats
[ -f "$tokenizer" ] || { echo "bench_pipeline: no tokenizer at $tokenizer" >&2; exit 1; }
[ -x "$bin" ] || { echo "bench_pipeline: $bin is not built" >&2; exit 1; }
mkdir -p "$res"
rm -f "$res"/*.json "$res"/*.log "$res"/*port

if [ ! -f "$out/$model/config.json" ]; then  # float32: compute is float32
  "$bin" init-model --config "assets/configs/$model" --out "$out/$model" >/dev/null
fi
python3 -c 'import json, sys; json.dump([
  "Once upon a time", "The capital of France is", "def fibonacci(n):",
  "In a distant galaxy, the crew of the starship", "Dear diary, today I",
  "The recipe calls for two cups of flour and", "Breaking news:",
  "The three laws of thermodynamics are"], open(sys.argv[1], "w"))' \
  "$res/prompts.json"
max_s=0
for s in $sizes $slow_s $bound_s; do [ "$s" -gt "$max_s" ] && max_s=$s; done
[ "$max_s" -le 8 ] || { echo "bench_pipeline: at most 8 sequences (prompts)" >&2; exit 1; }

pids=()
netns=""
veth=""
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -z "$netns" ] || ip netns del "$netns" 2>/dev/null || true
  [ -z "$veth" ] || ip link del "$veth" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

common=(--config configs/pipeline/pipeline.yaml
  --set model.path="$out/$model" --set model.tokenizer="$tokenizer"
  --set model.threads=1 --set model.base_dtype=auto
  --set serve.max_tokens="$tokens" --set serve.parallel=8
  --set pipeline.heartbeat_ms="$heartbeat_ms")
# start_ring NAME STAGES HEAD_HOST HEAD_CORE [NETNS STAGE_HOST]: the head
# on HEAD_CORE, stage 1 on core 1 (in NETNS, listening on STAGE_HOST);
# waits for "ring up"; sets $url (HTTP) and $addr (the head's pipeline
# address).
start_ring() {
  local name=$1 k=$2 host=$3 core=$4 ns=${5:-} shost=${6:-127.0.0.1} layers=()
  [ "$k" -gt 1 ] && [ "$split" != auto ] && layers=(--set "pipeline.layers=[$split]")
  taskset -c "$core" "$bin" serve "${common[@]}" --set pipeline.stages="$k" \
    "${layers[@]}" --set pipeline.head="$host:0" \
    --set pipeline.port_file="$res/$name.pport" \
    --set serve.listen=127.0.0.1:0 --set serve.port_file="$res/$name.hport" \
    >"$res/${name}_head.log" 2>&1 &
  pids+=($!)
  wait_for "[ -s $res/$name.pport ]" "$name: the head's pipeline port" "$res/${name}_head.log"
  if [ "$k" -eq 2 ]; then
    ${ns:+ip netns exec "$ns"} taskset -c 1 "$bin" serve "${common[@]}" \
      --set pipeline.stages=2 --set pipeline.stage=1 \
      --set pipeline.head="$host:$(cat "$res/$name.pport")" \
      --set pipeline.listen="$shost:0" >"$res/${name}_stage1.log" 2>&1 &
    pids+=($!)
  fi
  wait_for "grep -q 'ring up' $res/${name}_head.log" "$name: ring up" "$res/${name}"_*.log
  url="http://127.0.0.1:$(cat "$res/$name.hport")"
  addr="$host:$(cat "$res/$name.pport")"
  grep -h "split of\|ring up" "$res/${name}_head.log" | sed 's/^.*\] /  /'
}
# wait_for TEST WHAT LOG...: up to 10 minutes while every process started runs.
wait_for() {
  local p
  for _ in $(seq 6000); do
    eval "$1" && return 0
    for p in "${pids[@]}"; do
      kill -0 "$p" 2>/dev/null && continue
      echo "bench_pipeline: a process exited before $2" >&2
      tail -n 20 "${@:3}" >&2
      exit 1
    done
    sleep 0.1
  done
  echo "bench_pipeline: no $2 within 10 minutes" >&2
  tail -n 20 "${@:3}" >&2
  exit 1
}
stop_ring() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 100); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}
# measure FILE S [URLS ADDRS]: one row of runs against the ring started
# last (or the rings at URLS, ADDRS).
measure() {
  "${client[@]}" run "${3:-$url}" "$bin" "${4:-$addr}" "$2" "$tokens" "$repeats" \
    "$res/prompts.json" "$settle" >"$res/$1.json" || { rm -f "$res/$1.json"; return 1; }
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))
print("  %s: %.2f tokens/s (runs: %s)" % (sys.argv[2], r["tokens_per_s"],
      " ".join("%.2f" % x for x in r["rates"])))' "$res/$1.json" "$1"
}

echo "bench_pipeline: $model, TOKENS=$tokens REPEATS=$repeats SIZES=\"$sizes\" SPLIT=$split"
echo "reference: fedpeft generate of $gen_prompts prompt(s), 1 thread on core 0"
"${client[@]}" generate "$bin" "$out/$model" "$tokenizer" "$res/prompts.json" \
  "$gen_prompts" "$tokens" >"$res/generate.json"
echo "1 stage, core 0:"
start_ring ring1 1 127.0.0.1 0
for s in $sizes; do measure "ring1_s$s" "$s"; done
if [ "$bound_s" -gt 0 ]; then
  echo "a second 1-stage process on core 1 (two cores' ceiling):"
  url1=$url addr1=$addr
  start_ring bound 1 127.0.0.1 1
  measure bound "$bound_s" "$url1,$url" "$addr1,$addr"
fi
stop_ring
echo "2 stages, cores 0 and 1:"
start_ring ring2 2 127.0.0.1 0
for s in $sizes; do measure "ring2_s$s" "$s"; done
stop_ring

slow_note=""
slow_rates=()
# shape RATE: tbf both ways on the veth pair (none: unshaped). A burst of
# 1 ms of traffic (at least 2000 bytes) so that an activation waits for
# its serialization time, a 1 MB queue so that nothing is dropped.
shape() {
  if [ "$1" = none ]; then
    tc qdisc del dev "$veth" root 2>/dev/null || true
    ip netns exec "$netns" tc qdisc del dev "${veth%h}c" root 2>/dev/null || true
    return
  fi
  local kbit burst
  kbit=$(python3 -c "print(round(float('$1') * 1000))")
  burst=$(( kbit / 8 > 2000 ? kbit / 8 : 2000 ))
  tc qdisc replace dev "$veth" root tbf rate "${kbit}kbit" burst "$burst" limit 1000000
  ip netns exec "$netns" tc qdisc replace dev "${veth%h}c" root tbf \
    rate "${kbit}kbit" burst "$burst" limit 1000000
}
if [ "${SKIP_SLOW_LINK:-0}" = 1 ]; then
  slow_note="skipped (SKIP_SLOW_LINK=1)"
elif [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
  slow_note="skipped: needs root, ip and tc (iproute2) for a network namespace"
else
  net="10.77.$(($$ % 200 + 20))"
  netns="fpb$$"
  veth="fpb${$}h"
  if ! { ip netns add "$netns" &&
    ip link add "$veth" type veth peer name "${veth%h}c" &&
    ip link set "${veth%h}c" netns "$netns" &&
    ip addr add "$net.1/24" dev "$veth" && ip link set "$veth" up &&
    ip netns exec "$netns" ip addr add "$net.2/24" dev "${veth%h}c" &&
    ip netns exec "$netns" ip link set "${veth%h}c" up &&
    ip netns exec "$netns" ip link set lo up && shape 1000 && shape none
  } >"$res/netns.log" 2>&1; then
    slow_note="skipped: cannot make a network namespace, veth pair and tbf qdisc here ($(tail -n 1 "$res/netns.log"))"
  else
    echo "2 stages, S=$slow_s, stage 1 in network namespace $netns ($net.2), the head on $net.1:"
    start_ring slow 2 "$net.1" 0 "$netns" "$net.2"
    slow_note="tc netem is not used (delay not emulated): bandwidth only, tbf"
    for r in none $rates; do
      shape "$r"
      slow_rates+=("$r")
      measure "slow_$r" "$slow_s" && continue
      # A link too slow for the ring's heartbeats: say so, keep the rest.
      slow_note+="; at $r Mbit/s the requests failed: $(grep -h 'ring down' \
        "$res/slow_head.log" | tail -n 1 | sed 's/^.*ring down: //')"
      break
    done
    stop_ring
  fi
fi

split_how="by hand, SPLIT=$split"
[ "$split" = auto ] && split_how="by the head, from measured speed"
python3 -c 'import json, sys
a = sys.argv[1:]
json.dump({"model": a[0], "tokens": int(a[1]), "repeats": a[2], "split": a[3],
           "sizes": [int(s) for s in a[4].split()], "slow_s": int(a[5]),
           "slow_note": a[6], "rates": a[7:]}, open("'"$res"'/config.json", "w"))' \
  "$model" "$tokens" "$repeats" "$split_how" "$sizes" "$slow_s" "$slow_note" \
  "${slow_rates[@]}"
echo
status=0
"${client[@]}" report "$res" || status=$?
cleanup
pids=()
netns=""
veth=""
left=$(pgrep -f -- "serve --config configs/pipeline/pipeline.yaml --set model.path=$out/$model" || true)
[ -z "$left" ] || { echo "bench_pipeline: left running: $left" >&2; status=1; }
echo "bench_pipeline: done in $SECONDS s"
exit $status
