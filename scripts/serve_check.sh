#!/usr/bin/env bash
# `fedpeft serve` against real clients: OpenAI's own Node library (the
# `openai` npm package pinned in tests/serve/package.json) and curl. Two
# trained adapters (LoRA and rsLoRA with a rank pattern) and the base in one
# server: each greedy completion equals `fedpeft generate` with that
# adapter, streamed or not, through either client; a chat answer streams
# as it answers whole; an unknown model gets 404 and a bad field 400, as
# JSON errors the library reads; curl sees the same text and statuses.
#
# Usage: scripts/serve_check.sh [path/to/fedpeft] [work dir]
# Exit 0: all checks pass; 1: a check failed; 77: node or the npm package
# is not installed (skipped; scripts/setup.sh installs it).
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$(realpath "${1:-$root/build/fedpeft}")"
node_dir="$root/tests/serve"
if ! command -v node >/dev/null || ! command -v curl >/dev/null ||
  [ ! -d "$node_dir/node_modules/openai" ]; then
  echo "SKIPPED: node, curl or the npm package of tests/serve is missing" \
    "(scripts/setup.sh, or: cd tests/serve && npm install --omit=optional --ignore-scripts)"
  exit 77
fi
keep="${KEEP:-0}"
if [ -n "${2:-}" ]; then
  work="$2"
  keep=1
  mkdir -p "$work"
else
  work="$(mktemp -d /tmp/serve_check.XXXXXX)"
fi
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  [ "$keep" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT
cd "$root"

prompt="Once upon a time"
max_tokens=40
failures=0
check() {  # check NAME WANT GOT
  local nl=$'\n'
  if [ "$2" = "$3" ]; then
    echo "MATCH  $1: ${2//$nl/\\n}"
  else
    echo "FAIL   $1"
    echo "  want: ${2//$nl/\\n}"
    echo "  got : ${3//$nl/\\n}"
    failures=$((failures + 1))
  fi
}
train() {  # train NAME --set ...
  local name="$1"
  shift
  "$bin" train --config configs/local_train.yaml --out "$work/$name" \
    --set train.max_steps=30 --set data.max_records=800 \
    --set data.max_seq_len=64 --set sample.max_tokens=1 \
    --set model.threads=1 "$@" >"$work/train_$name.log" 2>&1 ||
    { echo "FAIL   training $name"; cat "$work/train_$name.log"; exit 1; }
}
generate() {  # generate [--adapter DIR]
  "$bin" generate --model assets/stories260K --prompt "$prompt" \
    --max-tokens $max_tokens "$@" 2>/dev/null
}
field() {  # field JSON PATH (a jq-like path in JS syntax)
  node -e "const o = JSON.parse(process.argv[1]); const v = o$2;
           process.stdout.write(typeof v === 'string' ? v : JSON.stringify(v));" "$1"
}

echo "== adapters: plain LoRA, rsLoRA with a rank pattern"
train plain
train rslora --set seed=7 --set peft.lora.use_rslora=true \
  --set "peft.lora.rank_pattern={q_proj: 2, down_proj: 4}"

"$bin" serve --config configs/serve/serve.yaml \
  --set serve.listen=127.0.0.1:0 --set serve.port_file="$work/port" \
  --set serve.adapters.plain="$work/plain" \
  --set serve.adapters.rslora="$work/rslora" \
  --set model.threads=1 >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 600); do
  [ -s "$work/port" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
if [ ! -s "$work/port" ]; then
  echo "FAIL   fedpeft serve did not start"
  cat "$work/serve.log"
  exit 1
fi
url="http://127.0.0.1:$(cat "$work/port")"

echo "== the openai library"
json="$(cd "$node_dir" && node openai_check.mjs "$url/v1" plain rslora \
  "$prompt" $max_tokens)" || { echo "FAIL   openai_check.mjs"; exit 1; }
want_plain="$(generate --adapter "$work/plain")"
want_rslora="$(generate --adapter "$work/rslora")"
if [ "$want_plain" = "$want_rslora" ]; then
  echo "FAIL   the two adapters generate the same text"
  failures=$((failures + 1))
fi
check "models" '["base","plain","rslora"]' "$(field "$json" .models)"
check "plain" "$want_plain" "$(field "$json" .plain.text)"
check "rslora" "$want_rslora" "$(field "$json" .rslora.text)"
check "plain finish" "length" "$(field "$json" .plain.finish)"
check "plain streamed" "$want_plain" "$(field "$json" .streamed)"
check "chat streamed = chat" "$(field "$json" .chat.content)" \
  "$(field "$json" .chat_streamed)"
check "chat role" "assistant" "$(field "$json" .chat.role)"
check "unknown model" "404" "$(field "$json" .unknown_model.status)"
check "bad field" "400 temperature" \
  "$(field "$json" .bad_field.status) $(field "$json" .bad_field.param)"

echo "== curl"
body() { printf '{"model":"%s","prompt":"%s","max_tokens":%d,"temperature":0}' "$1" "$prompt" $max_tokens; }
got="$(curl -sS "$url/v1/completions" -H 'Content-Type: application/json' \
  -d "$(body rslora)")"
check "curl rslora" "$want_rslora" "$(field "$got" '.choices[0].text')"
check "curl base" "$(generate)" "$(field "$(curl -sS "$url/v1/completions" \
  -d "$(body base)")" '.choices[0].text')"
status="$(curl -s -o "$work/err.json" -w '%{http_code}' "$url/v1/completions" \
  -d '{"model": "plain", "prompt": 3}')"
check "curl bad prompt" "400 prompt" \
  "$status $(field "$(cat "$work/err.json")" .error.param)"
status="$(curl -s -o /dev/null -w '%{http_code}' "$url/v1/nowhere")"
check "curl unknown route" "404" "$status"

echo
if [ $failures -gt 0 ]; then
  echo "serve_check: $failures check(s) FAILED (work dir: $work)"
  exit 1
fi
echo "serve_check: all checks passed"
