#!/usr/bin/env bash
# fedpeft's GGUF export against a real llama.cpp.
#
# llama.cpp is node-llama-cpp's prebuilt linux-x64 CPU binary (version
# pinned by tests/gguf/package-lock.json; `scripts/setup.sh`, or
# `npm install --omit=optional --ignore-scripts` in tests/gguf, installs
# it). Every check runs the same prompt through `fedpeft generate` and
# through llama.cpp (tests/gguf/llama_generate.mjs, F32 K/V cache), greedy,
# the same number of new tokens, and compares the generated text exactly:
#   base   assets/stories260K converted to GGUF F32, F16 and Q8_0
#   merged a trained adapter merged into the base, GGUF F32 and F16
#   lora   the base GGUF F32 plus our GGUF LoRA (llama.cpp's --lora path) of
#          four trained adapters: plain LoRA, rsLoRA, heterogeneous ranks
#          and alphas (rank_pattern/alpha_pattern), and rsLoRA with
#          heterogeneous ranks
#   arch   tiny random-weight models of the qwen3, qwen2 and llama
#          (SmolLM2) configs in assets/configs, F32, and a qwen3 one with
#          Qwen3's tokenizer.json (../shared/assets/tokenizers/qwen3, as the
#          tokenizer tests use; skipped when absent), whose prompt ids are
#          compared too
# and every file is parsed by @huggingface/gguf (tests/gguf/gguf_inspect.mjs)
# and checked against the config.json / adapter_config.json it came from.
# A negative control runs the rsLoRA adapter at the scale llama.cpp would
# have used without our folding (alpha / r instead of alpha / sqrt(r)) and
# requires a different text, so a check that cannot tell scales apart fails.
#
# Q8_0 is reported, not required: rounding the weights to 8 bits may change
# a greedy choice. Everything else must match.
#
# Usage: scripts/gguf_check.sh [FEDPEFT_BIN] [WORKDIR]
#   FEDPEFT_BIN default build/fedpeft; WORKDIR default a fresh temp dir
#   (removed at the end unless KEEP=1).
# Exit 0: all required checks pass; 1: a check failed; 77: node or the npm
# packages are not installed (skipped).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "${1:-$root/build/fedpeft}")"
node_dir="$root/tests/gguf"
if ! command -v node >/dev/null ||
  [ ! -d "$node_dir/node_modules/node-llama-cpp" ] ||
  [ ! -d "$node_dir/node_modules/@huggingface/gguf" ]; then
  echo "SKIPPED: node or the npm packages of tests/gguf are missing" \
    "(scripts/setup.sh, or: cd tests/gguf && npm install --omit=optional --ignore-scripts)"
  exit 77
fi
if [ -n "${2:-}" ]; then
  work="$2"
  mkdir -p "$work"
else
  work="$(mktemp -d /tmp/gguf_check.XXXXXX)"
  [ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
fi
cd "$root"  # configs/ paths are relative to the repository root

model=assets/stories260K
prompt="Once upon a time"
max_tokens=48
failures=0
start=$(date +%s)

llama() { (cd "$node_dir" && node llama_generate.mjs "$@"); }
fedpeft() { "$bin" "$@" 2>/dev/null; }
compare() {  # compare NAME FEDPEFT_TEXT LLAMA_TEXT [optional]
  local nl=$'\n'
  if [ "$2" = "$3" ]; then
    echo "MATCH   $1"
    echo "  both   : ${2//$nl/\\n}"
  elif [ "${4:-}" = optional ]; then
    echo "DIFFER  $1 (reported, not required)"
    echo "  fedpeft: ${2//$nl/\\n}"
    echo "  llama  : ${3//$nl/\\n}"
  else
    echo "FAIL    $1"
    echo "  fedpeft: ${2//$nl/\\n}"
    echo "  llama  : ${3//$nl/\\n}"
    failures=$((failures + 1))
  fi
}
inspect() {
  if ! (cd "$node_dir" && node gguf_inspect.mjs "$@"); then
    failures=$((failures + 1))
  fi
}

echo "== base model: fedpeft vs llama.cpp on GGUF F32/F16/Q8_0"
want="$(fedpeft generate --model "$model" --prompt "$prompt" \
  --max-tokens $max_tokens)"
for t in f32 f16 q8_0; do
  fedpeft export --model "$model" --merge --format gguf --gguf-type $t \
    --out "$work/base_$t.gguf" >/dev/null
  inspect model "$work/base_$t.gguf" "$root/$model/config.json" $t
  opt=""
  [ $t = q8_0 ] && opt=optional
  compare "base $t" "$want" \
    "$(llama "$work/base_$t.gguf" "$prompt" $max_tokens)" $opt
done

train() {  # train NAME --set ...
  local name="$1"
  shift
  fedpeft train --config configs/local_train.yaml --out "$work/$name" \
    --set train.max_steps=30 --set data.max_records=800 \
    --set data.max_seq_len=64 --set sample.max_tokens=1 \
    --set model.threads=1 "$@" >/dev/null
}
echo "== trained adapters: plain, rsLoRA, heterogeneous, rsLoRA heterogeneous"
train plain
train rslora --set peft.lora.use_rslora=true
hetero=(--set "peft.lora.rank_pattern={q_proj: 2, down_proj: 4, layers.3.self_attn.v_proj: 16}"
  --set "peft.lora.alpha_pattern={o_proj: 4, layers.1.mlp.up_proj: 40}")
train hetero "${hetero[@]}"
train rslora_hetero --set peft.lora.use_rslora=true "${hetero[@]}"

echo "== merged adapter: fedpeft (base + adapter) vs llama.cpp (merged GGUF)"
want="$(fedpeft generate --model "$model" --adapter "$work/plain" \
  --prompt "$prompt" --max-tokens $max_tokens)"
for t in f32 f16; do
  fedpeft export --adapter "$work/plain" --merge --format gguf \
    --gguf-type $t --out "$work/merged_$t.gguf" >/dev/null
  inspect model "$work/merged_$t.gguf" "$root/$model/config.json" $t
  compare "merged plain $t" "$want" \
    "$(llama "$work/merged_$t.gguf" "$prompt" $max_tokens)"
done

echo "== GGUF LoRA on the base GGUF: fedpeft (base + adapter) vs llama.cpp --lora"
for a in plain rslora hetero rslora_hetero; do
  fedpeft export --adapter "$work/$a" --format gguf \
    --out "$work/$a.lora.gguf" >/dev/null
  inspect lora "$work/$a.lora.gguf" "$work/base_f32.gguf" "$work/$a"
  want="$(fedpeft generate --model "$model" --adapter "$work/$a" \
    --prompt "$prompt" --max-tokens $max_tokens)"
  compare "lora $a" "$want" \
    "$(llama "$work/base_f32.gguf" "$prompt" $max_tokens "$work/$a.lora.gguf")"
  if [ $a = rslora ]; then
    # Negative control: llama.cpp's own alpha / r (r = 8) instead of the
    # true alpha / sqrt(8), i.e. user scale sqrt(8) / 8 on our file.
    unfolded="$(llama "$work/base_f32.gguf" "$prompt" $max_tokens \
      "$work/$a.lora.gguf" 0.35355339)"
    if [ "$unfolded" = "$want" ]; then
      echo "FAIL    negative control: rsLoRA at alpha/r gives the same text;" \
        "the check cannot tell the scales apart"
      failures=$((failures + 1))
    else
      echo "OK      negative control: rsLoRA at llama.cpp's alpha/r gives" \
        "another text (as an unfolded export would)"
    fi
  fi
done

echo "== other architectures: tiny random-weight models shaped like Qwen3-0.6B,"
echo "   Qwen2.5-0.5B and SmolLM2-135M with the stories260K tokenizer (random"
echo "   weights give repetitive text: a check of loading and layout, not of"
echo "   fine numerics)"
for m in qwen3-0.6b qwen2.5-0.5b smollm2-135m; do
  head_dim=()
  [ $m = qwen3-0.6b ] && head_dim=(--head-dim 32)  # q_dim 128 != hidden 64
  fedpeft init-model --config "assets/configs/$m" --out "$work/$m" \
    --layers 2 --hidden 64 --heads 4 --kv-heads 2 --intermediate 128 \
    --vocab 512 --max-positions 256 "${head_dim[@]}" --seed 3 >/dev/null
  cp "$model/tokenizer.model" "$work/$m/"
  # The special ids of the tokenizer given to it (<s> 1, </s> 2).
  node -e 'const fs = require("fs"); const f = process.argv[1];
    const c = JSON.parse(fs.readFileSync(f)); c.bos_token_id = 1;
    c.eos_token_id = 2; fs.writeFileSync(f, JSON.stringify(c, null, 1));' \
    "$work/$m/config.json"
  fedpeft export --model "$work/$m" --merge --format gguf --gguf-type f32 \
    --out "$work/$m.gguf" >/dev/null
  inspect model "$work/$m.gguf" "$work/$m/config.json" f32
  compare "random $m f32" \
    "$(fedpeft generate --model "$work/$m" --prompt "$prompt" \
      --max-tokens $max_tokens)" \
    "$(llama "$work/$m.gguf" "$prompt" $max_tokens)"
done

echo "== Qwen3's byte-level BPE tokenizer.json as tokenizer.ggml.model gpt2:"
echo "   a tiny random qwen3 model with the full vocabulary; the prompt's ids"
echo "   and the greedy text"
qwen3_tok="$root/../shared/assets/tokenizers/qwen3"
if [ -f "$qwen3_tok/tokenizer.json" ]; then
  q="$work/qwen3-bpe"
  fedpeft init-model --config assets/configs/qwen3-0.6b --out "$q" \
    --layers 2 --hidden 64 --heads 4 --kv-heads 2 --head-dim 32 \
    --intermediate 128 --max-positions 256 --seed 3 >/dev/null
  cp "$qwen3_tok/tokenizer.json" "$qwen3_tok/tokenizer_config.json" "$q/"
  fedpeft export --model "$q" --merge --format gguf --gguf-type f32 \
    --out "$q.gguf" >/dev/null
  inspect model "$q.gguf" "$q/config.json" f32
  bpe_prompt="The quick brown fox: naïve café, 12345 tokens!"
  ours="$(fedpeft tokenize --tokenizer "$q" --text "$bpe_prompt" | tail -1)"
  theirs="$( (cd "$node_dir" && GGUF_PRINT_PROMPT=1 node llama_generate.mjs \
    "$q.gguf" "$bpe_prompt" 0 2>&1 >/dev/null) | tail -1)"
  compare "qwen3 prompt ids" "${ours// /}" "${theirs// /}"
  compare "qwen3 bpe f32" \
    "$(fedpeft generate --model "$q" --prompt "$bpe_prompt" \
      --max-tokens $max_tokens)" \
    "$(llama "$q.gguf" "$bpe_prompt" $max_tokens)"
else
  echo "SKIPPED qwen3 tokenizer: $qwen3_tok/tokenizer.json not found"
fi

echo "gguf_check: $failures failure(s) in $(($(date +%s) - start)) s"
[ $failures -eq 0 ]
