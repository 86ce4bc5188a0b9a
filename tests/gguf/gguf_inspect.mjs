// Structural check of fedpeft's GGUF files with an independent parser
// (@huggingface/gguf), against the Hugging Face files they came from:
//   node gguf_inspect.mjs model FILE.gguf CONFIG.json f32|f16|q8_0
//   node gguf_inspect.mjs lora FILE.gguf BASE.gguf ADAPTER_DIR
// Prints "ok: ..." and exits 0, or prints every mismatch and exits 1.
import {gguf} from "@huggingface/gguf";
import {readFileSync, statSync} from "node:fs";

const [kind, file, ...rest] = process.argv.slice(2);
const errors = [];
const expect = (cond, what) => { if (!cond) errors.push(what); };
const GGML = {F32: 0, F16: 1, Q8_0: 8};
const TYPE_NAME = {0: "F32", 1: "F16", 8: "Q8_0"};
const BYTES = {0: (n) => 4 * n, 1: (n) => 2 * n, 8: (n) => (n / 32) * 34};

async function parse(path) {
  const r = await gguf(path, {allowLocalFile: true});
  expect(r.metadata.version === 3, `${path}: version ${r.metadata.version}, expected 3`);
  expect(r.littleEndian, `${path}: not little-endian`);
  const align = 32;
  expect(Number(r.tensorDataOffset) % align === 0,
         `${path}: data section at ${r.tensorDataOffset}, not 32-aligned`);
  // Offsets aligned, in order, non-overlapping, inside the file.
  let end = 0;
  for (const t of r.tensorInfos) {
    const off = Number(t.offset);
    const n = t.shape.reduce((a, b) => a * Number(b), 1);
    expect(off % align === 0, `${t.name}: offset ${off} not 32-aligned`);
    expect(off >= end, `${t.name}: offset ${off} overlaps the previous tensor (ends ${end})`);
    expect(t.dtype in BYTES, `${t.name}: type ${t.dtype}, expected F32/F16/Q8_0`);
    end = off + (BYTES[t.dtype] ? BYTES[t.dtype](n) : 0);
  }
  const size = statSync(path).size;
  expect(Number(r.tensorDataOffset) + end <= size,
         `${path}: tensor data ends at ${Number(r.tensorDataOffset) + end}, file has ${size} bytes`);
  return r;
}

const byName = (r) => Object.fromEntries(r.tensorInfos.map((t) => [t.name, t]));
const shape = (t) => t.shape.map(Number);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

if (kind === "model") {
  const [configPath, type] = rest;
  const c = JSON.parse(readFileSync(configPath, "utf8"));
  const r = await parse(file);
  const m = r.metadata;
  const arch = m["general.architecture"];
  expect(arch === (c.model_type === "mistral" ? "llama" : c.model_type),
         `general.architecture '${arch}' for model_type '${c.model_type}'`);
  const headDim = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  const want = {
    context_length: c.max_position_embeddings, embedding_length: c.hidden_size,
    block_count: c.num_hidden_layers, feed_forward_length: c.intermediate_size,
    "attention.head_count": c.num_attention_heads,
    "attention.head_count_kv": c.num_key_value_heads ?? c.num_attention_heads,
    "rope.dimension_count": headDim, vocab_size: c.vocab_size,
  };
  for (const [k, v] of Object.entries(want)) {
    expect(m[`${arch}.${k}`] === v, `${arch}.${k} = ${m[`${arch}.${k}`]}, expected ${v}`);
  }
  expect(Math.abs(m[`${arch}.rope.freq_base`] - (c.rope_theta ?? 10000)) < 1e-3, "rope.freq_base");
  expect(Math.abs(m[`${arch}.attention.layer_norm_rms_epsilon`] - c.rms_norm_eps) < 1e-9,
         "layer_norm_rms_epsilon");
  expect(m["general.file_type"] === {f32: 0, f16: 1, q8_0: 7}[type],
         `general.file_type ${m["general.file_type"]} for ${type}`);
  const bpe = m["tokenizer.ggml.model"] === "gpt2";
  expect(bpe || m["tokenizer.ggml.model"] === "llama", "tokenizer.ggml.model");
  if (bpe) expect(m["tokenizer.ggml.merges"]?.length > 0, "no tokenizer.ggml.merges");
  for (const k of bpe ? ["tokens", "token_type"] : ["tokens", "scores", "token_type"]) {
    expect(m[`tokenizer.ggml.${k}`]?.length === c.vocab_size,
           `tokenizer.ggml.${k} has ${m[`tokenizer.ggml.${k}`]?.length} entries, expected ${c.vocab_size}`);
  }
  // The ids come from the tokenizer; a config may leave them null, and a
  // tokenizer.json may have no BOS (Qwen) where config.json names one.
  for (const k of ["bos", "eos"]) {
    const want = c[`${k}_token_id`], got = m[`tokenizer.ggml.${k}_token_id`];
    expect(typeof want !== "number" || got === want || (bpe && k === "bos" && got === undefined),
           `${k} id ${got}, config says ${want}`);
  }
  // Every tensor the config implies, with its shape (innermost first) and type.
  const d = c.hidden_size, f = c.intermediate_size, v = c.vocab_size;
  const q = c.num_attention_heads * headDim, kv = (c.num_key_value_heads ?? c.num_attention_heads) * headDim;
  const expected = {"token_embd.weight": [d, v], "output_norm.weight": [d]};
  if (!c.tie_word_embeddings) expected["output.weight"] = [d, v];
  for (let i = 0; i < c.num_hidden_layers; ++i) {
    Object.assign(expected, {
      [`blk.${i}.attn_norm.weight`]: [d], [`blk.${i}.ffn_norm.weight`]: [d],
      [`blk.${i}.attn_q.weight`]: [d, q], [`blk.${i}.attn_k.weight`]: [d, kv],
      [`blk.${i}.attn_v.weight`]: [d, kv], [`blk.${i}.attn_output.weight`]: [q, d],
      [`blk.${i}.ffn_gate.weight`]: [d, f], [`blk.${i}.ffn_up.weight`]: [d, f],
      [`blk.${i}.ffn_down.weight`]: [f, d],
    });
    if (c.model_type === "qwen2") {  // q/k/v biases
      Object.assign(expected, {[`blk.${i}.attn_q.bias`]: [q], [`blk.${i}.attn_k.bias`]: [kv],
        [`blk.${i}.attn_v.bias`]: [kv]});
    }
    if (c.model_type === "qwen3") {  // per-head q/k RMSNorm
      Object.assign(expected, {[`blk.${i}.attn_q_norm.weight`]: [headDim],
        [`blk.${i}.attn_k_norm.weight`]: [headDim]});
    }
  }
  const tensors = byName(r);
  expect(r.tensorInfos.length === Object.keys(expected).length,
         `${r.tensorInfos.length} tensors, expected ${Object.keys(expected).length}`);
  const matrix = {f32: GGML.F32, f16: GGML.F16, q8_0: GGML.Q8_0}[type];
  for (const [name, s] of Object.entries(expected)) {
    const t = tensors[name];
    if (!t) { errors.push(`missing tensor ${name}`); continue; }
    expect(same(shape(t), s), `${name}: shape [${shape(t)}], expected [${s}]`);
    const wantType = s.length === 1 ? GGML.F32
        : matrix === GGML.Q8_0 && s[0] % 32 !== 0 ? GGML.F16 : matrix;
    expect(t.dtype === wantType, `${name}: ${TYPE_NAME[t.dtype]}, expected ${TYPE_NAME[wantType]}`);
  }
} else if (kind === "lora") {
  const [basePath, adapterDir] = rest;
  const cfg = JSON.parse(readFileSync(`${adapterDir}/adapter_config.json`, "utf8"));
  const r = await parse(file);
  const base = await parse(basePath);
  const m = r.metadata;
  expect(m["general.type"] === "adapter", `general.type '${m["general.type"]}'`);
  expect(m["adapter.type"] === "lora", `adapter.type '${m["adapter.type"]}'`);
  expect(m["general.architecture"] === base.metadata["general.architecture"], "architecture differs from the base");
  expect(m["adapter.lora.alpha"] === cfg.lora_alpha,
         `adapter.lora.alpha ${m["adapter.lora.alpha"]}, expected lora_alpha ${cfg.lora_alpha}`);
  // PEFT's rank of a module: the rank_pattern key matching a suffix of its
  // path (the longest, when several do), else r.
  const GGUF_TO_HF = {attn_q: "self_attn.q_proj", attn_k: "self_attn.k_proj", attn_v: "self_attn.v_proj",
    attn_output: "self_attn.o_proj", ffn_gate: "mlp.gate_proj", ffn_up: "mlp.up_proj", ffn_down: "mlp.down_proj"};
  const rankOf = (path) => {
    let best = null;
    for (const key of Object.keys(cfg.rank_pattern ?? {})) {
      if ((path === key || path.endsWith("." + key)) && (!best || key.length > best.length)) best = key;
    }
    return best ? cfg.rank_pattern[best] : cfg.r;
  };
  const tensors = byName(r);
  const baseTensors = byName(base);
  const nLayers = base.metadata[`${base.metadata["general.architecture"]}.block_count`];
  let pairs = 0;
  for (let i = 0; i < nLayers; ++i) {
    for (const [g, hf] of Object.entries(GGUF_TO_HF)) {
      const proj = hf.split(".")[1];
      if (!cfg.target_modules.includes(proj)) continue;
      const name = `blk.${i}.${g}.weight`;
      const a = tensors[`${name}.lora_a`], b = tensors[`${name}.lora_b`], w = baseTensors[name];
      if (!a || !b) { errors.push(`missing ${name}.lora_a/lora_b`); continue; }
      const rank = rankOf(`model.layers.${i}.${hf}`);
      const [inDim, outDim] = shape(w);
      expect(same(shape(a), [inDim, rank]), `${name}.lora_a: [${shape(a)}], expected [${inDim}, ${rank}]`);
      expect(same(shape(b), [rank, outDim]), `${name}.lora_b: [${shape(b)}], expected [${rank}, ${outDim}]`);
      expect(a.dtype === GGML.F32 && b.dtype === GGML.F32, `${name}: lora tensors not F32`);
      ++pairs;
    }
  }
  expect(r.tensorInfos.length === 2 * pairs, `${r.tensorInfos.length} tensors, expected ${2 * pairs}`);
} else {
  console.error("usage: node gguf_inspect.mjs model FILE CONFIG.json TYPE | lora FILE BASE.gguf ADAPTER_DIR");
  process.exit(2);
}
if (errors.length) {
  console.log(`FAIL ${file}:\n  ` + errors.join("\n  "));
  process.exit(1);
}
console.log(`ok: ${file} (${kind})`);
