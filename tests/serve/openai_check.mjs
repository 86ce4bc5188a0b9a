// `fedpeft serve` through OpenAI's own Node client library (the `openai`
// package pinned in package.json), as an application would call it.
// Usage: node openai_check.mjs BASE_URL MODEL_A MODEL_B PROMPT MAX_TOKENS
// Prints one JSON object: each model's greedy completion, a streamed one
// and a chat answer, the models listed, and the error an unknown model
// and a bad field get (status, message); scripts/serve_check.sh compares
// it with `fedpeft generate`.
import OpenAI from "openai";

const [baseURL, a, b, prompt, maxTokens] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const out = {};

out.models = (await client.models.list()).data.map((m) => m.id).sort();
for (const model of [a, b]) {
  const r = await client.completions.create({
    model, prompt, max_tokens: Number(maxTokens), temperature: 0,
  });
  out[model] = { text: r.choices[0].text, finish: r.choices[0].finish_reason,
                 usage: r.usage };
}
const stream = await client.completions.create({
  model: a, prompt, max_tokens: Number(maxTokens), temperature: 0, stream: true,
});
out.streamed = "";
for await (const chunk of stream) out.streamed += chunk.choices[0]?.text ?? "";

const chat = await client.chat.completions.create({
  model: b, messages: [{ role: "user", content: "Tell me a story." }],
  max_tokens: 16, temperature: 0,
});
out.chat = { role: chat.choices[0].message.role,
             content: chat.choices[0].message.content };
const chatStream = await client.chat.completions.create({
  model: b, messages: [{ role: "user", content: "Tell me a story." }],
  max_tokens: 16, temperature: 0, stream: true,
});
out.chat_streamed = "";
for await (const chunk of chatStream) {
  out.chat_streamed += chunk.choices[0]?.delta?.content ?? "";
}

for (const [name, request] of [
  ["unknown_model", { model: "no-such-adapter", prompt, max_tokens: 4 }],
  ["bad_field", { model: a, prompt, max_tokens: 4, temperature: 9 }],
]) {
  try {
    await client.completions.create(request);
    out[name] = { status: 200 };
  } catch (e) {
    out[name] = { status: e.status, message: e.error?.message ?? e.message,
                  param: e.error?.param ?? null };
  }
}
console.log(JSON.stringify(out));
