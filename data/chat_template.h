// Chat templates: instruction and conversation records laid out the way a
// model's own Jinja chat template (tokenizer_config.json) lays them out for
// training (add_generation_prompt false), as segments that say which text
// the loss counts, and tokenized so the ids equal tokenizing the whole
// rendered string with special tokens matched first.
//
// No Jinja interpreter: each family's template is written out in C++ and
// pinned byte for byte to the real template's rendering by
// @huggingface/jinja (tests/reference/chat_templates/*.json, made by
// tests/reference/chat_template_fixtures.mjs).
//
// Families (ChatTemplateNames()):
//   alpaca    today's layout, "### Instruction:" ... (no chat template)
//   chatml    <|im_start|>{role}\n{content}<|im_end|>\n, no default system
//   qwen2.5   chatml plus Qwen2.5's default system message when none given
//   qwen3     chatml; the assistant turn after the last user turn carries a
//             <think>...</think> block (empty when there is no reasoning),
//             earlier assistant turns lose theirs, as Qwen3's template does
//   smollm2   chatml plus SmolLM2's default system message
//   llama3    <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>
//             \n\n{content|trim}<|eot_id|> (Llama-3.0's template)
//   llama3.1  llama3 with the system header Llama-3.1's template always
//             writes: "Cutting Knowledge Date: December 2023\nToday Date:
//             26 Jul 2024\n\n" (its default date_string; Llama-3.2's
//             template puts today's date there, which training data must
//             not depend on)
//   llama2    <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]
//             {assistant} </s> (Llama-2-chat)
//   mistral   <s> [INST] {system}\n\n{user} [/INST] {assistant}</s>
//             (Mistral-7B-Instruct-v0.1's current template)
//   gemma     <bos><start_of_turn>user\n{system}\n\n{user|trim}<end_of_turn>
//             \n<start_of_turn>model\n{assistant|trim}<end_of_turn>\n
//             (Gemma-3's; Gemma-1/2 refuse a system message instead)
//   phi3      <|{role}|>\n{content}<|end|>\n ... then <|endoftext|>
//             (Phi-3-mini's; its template ends with eos_token)
//
// Loss: the trainable text of an assistant turn is its content as rendered
// plus the template's end-of-turn token (<|im_end|>, <|eot_id|>, </s>,
// <end_of_turn>, <|end|>); headers, user and system text, the newline after
// an end-of-turn token and Phi-3's final <|endoftext|> are not trained.
// Qwen3's empty "<think>\n\n</think>\n\n" is prompt (it is what the
// template writes when thinking is off); a non-empty reasoning block is
// trained with the answer.
//
// Thread-safety: free functions over values.
#ifndef FEDPEFT_DATA_CHAT_TEMPLATE_H_
#define FEDPEFT_DATA_CHAT_TEMPLATE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/tokenizer.h"

namespace fedpeft {
namespace data {

enum class ChatFamily {
  kAlpaca,
  kChatml,
  kQwen25,
  kQwen3,
  kSmollm2,
  kLlama3,
  kLlama31,
  kLlama2,
  kMistral,
  kGemma,
  kPhi3,
};

struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
};

// A run of rendered text; `trains` says whether the loss counts its tokens.
struct Segment {
  std::string text;
  bool trains = false;
};

// Every name data.chat_template accepts besides "auto" ("none" is a
// synonym of "alpaca"), for messages and config checks.
const std::vector<std::string>& ChatTemplateNames();

// "chatml" -> ChatFamily::kChatml. InvalidArgument naming the value and the
// choices for an unknown name (and for "auto", which must be resolved by
// DetectChatTemplate first).
StatusOr<ChatFamily> ParseChatTemplateName(const std::string& name);
std::string ChatTemplateName(ChatFamily family);

// The family of a Jinja chat template (the chat_template string of a
// tokenizer_config.json) by fingerprints of each family's real template.
// InvalidArgument quoting the start of the template and listing the choices
// when no family matches (e.g. a Mistral v0.3 or tool-only template).
StatusOr<ChatFamily> DetectChatTemplate(const std::string& jinja);

// The family named by tokenizer_config.json at `path`: its chat_template
// string (or the "default" entry of a list of named templates). kAlpaca when
// the file has no chat_template (a base model); errors name the file.
StatusOr<ChatFamily> DetectChatTemplateFile(const std::string& path);

// Renders a conversation as the family's template does with
// add_generation_prompt false. Roles: system (optional, first only for
// llama2/mistral/gemma), user, assistant; llama2, mistral and gemma need
// user and assistant to alternate starting with user, as their templates
// require. Errors name the message index and the rule broken.
// REQUIRES: family != kAlpaca.
StatusOr<std::vector<Segment>> RenderChat(ChatFamily family,
                                          const std::vector<ChatMessage>& msgs);

// The prompt of a conversation that asks for the assistant's next turn: the
// rendering with add_generation_prompt true (the assistant header the
// family's template appends; Llama-2 and Mistral append none, Phi-3 drops
// its final <|endoftext|>). Qwen3's is its thinking-on prompt (no empty
// <think> block). The last message must be the user's; errors as
// RenderChat's. REQUIRES: family != kAlpaca.
StatusOr<std::string> RenderChatPrompt(ChatFamily family,
                                       const std::vector<ChatMessage>& msgs);

// The token that ends an assistant turn in the family's template
// (<|im_end|>, <|eot_id|>, </s>, ...): where generation of a chat answer
// stops. Empty for kAlpaca.
std::string EndOfTurnToken(ChatFamily family);

// Strings the family's rendering holds that tokenizers of that family have
// as added (special) tokens, matched before BPE. `required` ones must have
// an id (see SpecialTokenId); the others are special only where the
// tokenizer has them (Mistral v0.3's [INST], Qwen3's <think>).
struct SpecialToken {
  std::string text;
  bool required = true;
};
std::vector<SpecialToken> SpecialTokens(ChatFamily family);

// The id of a template special token in `tokenizer`: Tokenizer::TokenToId,
// else the tokenizer's BOS/EOS when `text` is the family's BOS/EOS string
// (a SentencePiece tokenizer.model's <s>, </s>), else -1.
int64_t SpecialTokenId(ChatFamily family, const std::string& text,
                       const model::Tokenizer& tokenizer);

// Checks that `tokenizer` has an id for each required special token of the
// family; the error names the token, the template and a hint.
Status CheckChatTokenizer(ChatFamily family, const model::Tokenizer& tokenizer);

// Tokenizes rendered segments: the whole text is cut at the family's
// special tokens (leftmost, longest first), each special becomes its id and
// each run of text between two is encoded whole with Encode(run, false,
// false). That is how Hugging Face tokenizers encode a string with added
// tokens (added tokens are split off first, then every remaining run is
// normalized, pre-tokenized and encoded on its own), so the ids equal
// encoding the whole rendered string. Segment boundaries inside a run only
// decide the mask: the run's tokens before the longest common prefix of
// Encode(run up to the boundary) and Encode(run) belong to the earlier
// segment; a token that straddles the boundary goes to the later one.
// `trains[j]` says whether `ids[j]` is a trained token.
void EncodeSegments(ChatFamily family, const std::vector<Segment>& segments,
                    const model::Tokenizer& tokenizer,
                    std::vector<int64_t>* ids, std::vector<bool>* trains);

}  // namespace data
}  // namespace fedpeft

#endif  // FEDPEFT_DATA_CHAT_TEMPLATE_H_
