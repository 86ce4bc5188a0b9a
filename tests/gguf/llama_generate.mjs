// Greedy generation with llama.cpp (node-llama-cpp's prebuilt CPU binary):
//   node llama_generate.mjs MODEL.gguf PROMPT MAX_TOKENS [LORA.gguf [SCALE]]
// SCALE is llama.cpp's user scale of the adapter (default 1).
// Prints the generated continuation only (not the prompt), as
// `fedpeft generate` does; stops at EOS or MAX_TOKENS. Prompt: BOS (unless
// the file's add_bos_token is false) + the prompt's tokens, as fedpeft's
// Encode. GGUF_PRINT_PROMPT=1 prints the prompt's ids to stderr.
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const [modelPath, prompt, maxTokensArg, loraPath, scaleArg] = process.argv.slice(2);
if (!modelPath || prompt === undefined || !maxTokensArg) {
  console.error("usage: node llama_generate.mjs MODEL.gguf PROMPT MAX_TOKENS [LORA.gguf [SCALE]]");
  process.exit(2);
}
const maxTokens = Number(maxTokensArg);
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({
  contextSize: 256,
  batchSize: 256,
  threads: 1,
  // F32 K/V like fedpeft (llama.cpp defaults to F16 K/V, which can flip a
  // near-tie greedy choice), and no flash attention (its own rounding).
  experimentalKvCacheKeyType: "F32",
  experimentalKvCacheValueType: "F32",
  flashAttention: false,
  lora: loraPath ? {adapters: [{filePath: loraPath, scale: scaleArg ? Number(scaleArg) : 1.0}]} : undefined,
});
const sequence = context.getSequence();
// BOS when the file says so (tokenizer.ggml.add_bos_token), as fedpeft's
// Encode adds it only where the tokenizer's post-processor does.
const bos = model.tokens.bos;
const addBos = bos != null && model.fileInfo.metadata?.tokenizer?.ggml?.add_bos_token !== false;
const promptTokens = [...(addBos ? [bos] : []), ...model.tokenize(prompt)];
if (process.env.GGUF_PRINT_PROMPT) console.error(JSON.stringify(promptTokens));
const generated = [];
if (maxTokens > 0) {
  for await (const token of sequence.evaluate(promptTokens, {temperature: 0})) {
    if (token === model.tokens.eos) break;
    generated.push(token);
    if (generated.length >= maxTokens) break;
  }
}
// The generated ids decoded alone, as `fedpeft generate` decodes them
// (SentencePiece drops the first piece's leading space).
process.stdout.write(model.detokenize(generated) + "\n");
await context.dispose();
await model.dispose();
await llama.dispose();
