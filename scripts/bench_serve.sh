#!/usr/bin/env bash
# `fedpeft serve` throughput on a realistic model: a random-weight model with
# the real config of Qwen3-0.6B (default) and Qwen3's own tokenizer.json and
# chat template, two random LoRA adapters (r=8 on q/v), greedy chat answers
# of TOKENS new tokens over HTTP. Rows, each the median of REPEATS runs:
#   base alone, 1 request at a time
#   adapter a, 1 request at a time           (LoRA's cost when not merged)
#   adapters a and b, 2 requests at once, serve.parallel 1, then 2
# Prints new tokens/s (all requests together) and one request's latency.
#
# Usage: scripts/bench_serve.sh    (env: MODEL=qwen3-0.6b TOKENS=32 REPEATS=3
#   THREADS=0 BASE_DTYPE=auto; ~3 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${BIN:-build/fedpeft}"
model="${MODEL:-qwen3-0.6b}"
tokens="${TOKENS:-32}"
repeats="${REPEATS:-3}"
threads="${THREADS:-0}"
base_dtype="${BASE_DTYPE:-auto}"
tokenizer="${TOKENIZER:-../shared/assets/tokenizers/qwen3/tokenizer.json}"
out="out/bench_serve"
mkdir -p "$out"
[ -f "$tokenizer" ] || { echo "bench_serve: no tokenizer at $tokenizer" >&2; exit 1; }

if [ ! -f "$out/$model/config.json" ]; then
  "$bin" init-model --config "assets/configs/$model" --out "$out/$model" \
    --dtype bfloat16 >/dev/null
fi
for a in a:1 b:2; do
  [ -f "$out/lora_${a%%:*}/adapter_config.json" ] ||
    python3 scripts/make_random_lora.py "$out/$model/config.json" \
      "$out/lora_${a%%:*}" 8 "${a##*:}"
done

server=""
trap '[ -n "$server" ] && kill $server 2>/dev/null; wait 2>/dev/null' EXIT
start() {  # start PARALLEL
  rm -f "$out/port"
  "$bin" serve --config configs/serve/serve.yaml \
    --set model.path="$out/$model" --set model.tokenizer="$tokenizer" \
    --set model.base_dtype="$base_dtype" --set model.threads="$threads" \
    --set serve.listen=127.0.0.1:0 --set serve.port_file="$out/port" \
    --set serve.adapters.a="$out/lora_a" --set serve.adapters.b="$out/lora_b" \
    --set serve.parallel="$1" --set serve.max_tokens="$tokens" \
    >"$out/serve_$1.log" 2>&1 &
  server=$!
  for _ in $(seq 1200); do
    [ -s "$out/port" ] && break
    kill -0 $server 2>/dev/null || { cat "$out/serve_$1.log"; exit 1; }
    sleep 0.1
  done
  url="http://127.0.0.1:$(cat "$out/port")"
}
stop() { kill $server; wait $server 2>/dev/null || true; server=""; }
row() {  # row LABEL MODELS CONCURRENCY
  local r
  r="$(python3 scripts/bench_serve_client.py "$url" "$2" "$3" "$tokens" \
       "$repeats" chat)"
  python3 -c 'import json, sys
r = json.loads(sys.argv[2])
print("| %-46s | %8.2f | %8.2f |" % (sys.argv[1], r["tokens_per_s"], r["latency_s"]))' "$1" "$r"
}

echo "fedpeft serve: $model (random weights, base_dtype $base_dtype), Qwen3 chat template, $tokens new tokens a request, median of $repeats"
echo "| requests | tokens/s | latency s |"
echo "| --- | ---: | ---: |"
start 1
row "base, 1 at a time" base 1
row "adapter a (LoRA r=8 q/v), 1 at a time" a 1
row "adapters a + b, 2 at once, serve.parallel 1" a,b 2
stop
start 2
row "adapters a + b, 2 at once, serve.parallel 2" a,b 2
stop
grep -m1 "chat template" "$out/serve_1.log" | sed 's/^.*\] /log: /'
