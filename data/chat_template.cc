#include "data/chat_template.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "common/file_util.h"

namespace fedpeft {
namespace data {
namespace {

struct FamilyInfo {
  ChatFamily family;
  const char* name;
};

constexpr FamilyInfo kFamilies[] = {
    {ChatFamily::kAlpaca, "alpaca"},    {ChatFamily::kChatml, "chatml"},
    {ChatFamily::kQwen25, "qwen2.5"},   {ChatFamily::kQwen3, "qwen3"},
    {ChatFamily::kSmollm2, "smollm2"},  {ChatFamily::kLlama3, "llama3"},
    {ChatFamily::kLlama31, "llama3.1"}, {ChatFamily::kLlama2, "llama2"},
    {ChatFamily::kMistral, "mistral"},  {ChatFamily::kGemma, "gemma"},
    {ChatFamily::kPhi3, "phi3"},
};

constexpr char kQwenSystem[] =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
constexpr char kSmolSystem[] =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
constexpr char kLlama31SystemHeader[] =
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

std::string Choices() {
  std::string out = "auto";
  for (const std::string& n : ChatTemplateNames()) out += ", " + n;
  return out;
}

bool Contains(const std::string& s, const char* part) {
  return s.find(part) != std::string::npos;
}

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' ||
         c == '\f';
}

// Jinja's trim and Python's str.strip(): ASCII whitespace only (Python and
// JavaScript also strip Unicode spaces such as U+00A0; records rarely start
// or end with them).
std::string Strip(const std::string& s) {
  size_t begin = 0;
  size_t end = s.size();
  while (begin < end && IsSpace(s[begin])) ++begin;
  while (end > begin && IsSpace(s[end - 1])) --end;
  return s.substr(begin, end - begin);
}

std::string LStripNewlines(const std::string& s) {
  size_t begin = 0;
  while (begin < s.size() && s[begin] == '\n') ++begin;
  return s.substr(begin);
}

std::string RStripNewlines(const std::string& s) {
  size_t end = s.size();
  while (end > 0 && s[end - 1] == '\n') --end;
  return s.substr(0, end);
}

// Segments under construction; adjacent runs of the same kind merge.
class Layout {
 public:
  void Prompt(const std::string& text) { Add(text, false); }
  void Train(const std::string& text) { Add(text, true); }
  std::vector<Segment> Take() { return std::move(segments_); }

 private:
  void Add(const std::string& text, bool trains) {
    if (text.empty()) return;
    if (!segments_.empty() && segments_.back().trains == trains) {
      segments_.back().text += text;
    } else {
      segments_.push_back({text, trains});
    }
  }
  std::vector<Segment> segments_;
};

Status RoleError(size_t i, const ChatMessage& m, const std::string& why) {
  return Status::InvalidArgument("messages[" + std::to_string(i) + "] (role '" +
                                 m.role + "'): " + why);
}

// ChatML and its Qwen2.5 / SmolLM2 variants differ only in the default
// system message and in whether a leading system message is written by the
// header or the loop; the output is the same either way.
void RenderChatml(const std::vector<ChatMessage>& msgs,
                  const char* default_system, Layout* out) {
  if (default_system != nullptr && msgs.front().role != "system") {
    out->Prompt(std::string("<|im_start|>system\n") + default_system +
                "<|im_end|>\n");
  }
  for (const ChatMessage& m : msgs) {
    out->Prompt("<|im_start|>" + m.role + "\n");
    if (m.role == "assistant") {
      out->Train(m.content + "<|im_end|>");
    } else {
      out->Prompt(m.content + "<|im_end|>");
    }
    out->Prompt("\n");
  }
}

// Qwen3: reasoning is kept only for assistant turns after the last user
// turn; the final turn always carries a think block.
void RenderQwen3(const std::vector<ChatMessage>& msgs, Layout* out) {
  size_t last_query = msgs.size() - 1;
  for (size_t k = msgs.size(); k-- > 0;) {
    const std::string& c = msgs[k].content;
    const bool tool_response =
        c.rfind("<tool_response>", 0) == 0 && c.size() >= 16 &&
        c.compare(c.size() - 16, 16, "</tool_response>") == 0;
    if (msgs[k].role == "user" && !tool_response) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role != "assistant") {
      out->Prompt("<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n");
      continue;
    }
    std::string content = m.content;
    std::string reasoning;
    const size_t close = m.content.find("</think>");
    if (close != std::string::npos) {
      const size_t last_close = m.content.rfind("</think>");
      content = LStripNewlines(m.content.substr(last_close + 8));
      std::string before = RStripNewlines(m.content.substr(0, close));
      const size_t open = before.rfind("<think>");
      if (open != std::string::npos) before = before.substr(open + 7);
      reasoning = LStripNewlines(before);
    }
    out->Prompt("<|im_start|>assistant\n");
    const bool last = i + 1 == msgs.size();
    if (i > last_query && (last || !reasoning.empty())) {
      const std::string think = "<think>\n" +
                                LStripNewlines(RStripNewlines(reasoning)) +
                                "\n</think>\n\n";
      if (reasoning.empty()) {
        out->Prompt(think);
      } else {
        out->Train(think);
      }
      out->Train(LStripNewlines(content) + "<|im_end|>");
    } else {
      out->Train(content + "<|im_end|>");
    }
    out->Prompt("\n");
  }
}

void RenderLlama3(const std::vector<ChatMessage>& msgs, bool llama31,
                  Layout* out) {
  out->Prompt("<|begin_of_text|>");
  size_t first = 0;
  if (llama31) {
    std::string system;
    if (msgs.front().role == "system") {
      system = Strip(msgs.front().content);
      first = 1;
    }
    out->Prompt(std::string("<|start_header_id|>system<|end_header_id|>\n\n") +
                kLlama31SystemHeader + system + "<|eot_id|>");
  }
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    out->Prompt("<|start_header_id|>" + m.role + "<|end_header_id|>\n\n");
    if (m.role == "assistant") {
      out->Train(Strip(m.content) + "<|eot_id|>");
    } else {
      out->Prompt(Strip(m.content) + "<|eot_id|>");
    }
  }
}

// After an optional leading system message, user and assistant alternate
// starting with user (Llama-2, Mistral and Gemma templates raise otherwise).
Status CheckAlternation(const std::vector<ChatMessage>& msgs, size_t first) {
  for (size_t i = first; i < msgs.size(); ++i) {
    const bool want_user = (i - first) % 2 == 0;
    if (msgs[i].role != (want_user ? "user" : "assistant")) {
      return RoleError(
          i, msgs[i],
          std::string("expected '") + (want_user ? "user" : "assistant") +
              "': after an optional first system message this template "
              "needs user and assistant to alternate, starting with user");
    }
  }
  return Status::Ok();
}

void RenderLlama2(const std::vector<ChatMessage>& msgs, size_t first,
                  Layout* out) {
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role == "user") {
      std::string content = m.content;
      if (i == first && first == 1) {
        content = "<<SYS>>\n" + msgs[0].content + "\n<</SYS>>\n\n" + content;
      }
      out->Prompt("<s>[INST] " + Strip(content) + " [/INST]");
    } else {
      out->Train(" " + Strip(m.content) + " </s>");
    }
  }
}

void RenderMistral(const std::vector<ChatMessage>& msgs, size_t first,
                   Layout* out) {
  out->Prompt("<s>");
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    if (m.role == "user") {
      const std::string system =
          i == first && first == 1 ? msgs[0].content + "\n\n" : "";
      out->Prompt(" [INST] " + system + m.content + " [/INST]");
    } else {
      out->Train(" " + m.content + "</s>");
    }
  }
}

void RenderGemma(const std::vector<ChatMessage>& msgs, size_t first,
                 Layout* out) {
  out->Prompt("<bos>");
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    const bool user = m.role == "user";
    std::string head =
        std::string("<start_of_turn>") + (user ? "user" : "model") + "\n";
    if (i == first && first == 1) head += msgs[0].content + "\n\n";
    out->Prompt(head);
    if (user) {
      out->Prompt(Strip(m.content) + "<end_of_turn>");
    } else {
      out->Train(Strip(m.content) + "<end_of_turn>");
    }
    out->Prompt("\n");
  }
}

void RenderPhi3(const std::vector<ChatMessage>& msgs, Layout* out) {
  for (const ChatMessage& m : msgs) {
    out->Prompt("<|" + m.role + "|>\n");
    if (m.role == "assistant") {
      out->Train(m.content + "<|end|>");
    } else {
      out->Prompt(m.content + "<|end|>");
    }
    out->Prompt("\n");
  }
  out->Prompt("<|endoftext|>");
}

}  // namespace

const std::vector<std::string>& ChatTemplateNames() {
  static const std::vector<std::string>* names = [] {
    auto* v = new std::vector<std::string>{"none"};
    for (const FamilyInfo& f : kFamilies) v->push_back(f.name);
    return v;
  }();
  return *names;
}

StatusOr<ChatFamily> ParseChatTemplateName(const std::string& name) {
  if (name == "none") return ChatFamily::kAlpaca;
  for (const FamilyInfo& f : kFamilies) {
    if (name == f.name) return f.family;
  }
  return Status::InvalidArgument("data.chat_template: unknown template '" +
                                 name + "'; expected one of " + Choices());
}

std::string ChatTemplateName(ChatFamily family) {
  for (const FamilyInfo& f : kFamilies) {
    if (f.family == family) return f.name;
  }
  return "?";
}

StatusOr<ChatFamily> DetectChatTemplate(const std::string& jinja) {
  if (Contains(jinja, "<|im_start|>")) {
    if (Contains(jinja, "<think>")) return ChatFamily::kQwen3;
    if (Contains(jinja, "You are Qwen, created by Alibaba Cloud")) {
      return ChatFamily::kQwen25;
    }
    if (Contains(jinja, "named SmolLM")) return ChatFamily::kSmollm2;
    // Plain ChatML writes no system message of its own.
    if (!Contains(jinja, "<|im_start|>system")) return ChatFamily::kChatml;
  } else if (Contains(jinja, "<|start_header_id|>")) {
    return Contains(jinja, "Cutting Knowledge Date") ? ChatFamily::kLlama31
                                                     : ChatFamily::kLlama3;
  } else if (Contains(jinja, "<start_of_turn>")) {
    return ChatFamily::kGemma;
  } else if (Contains(jinja, "<|user|>") && Contains(jinja, "<|end|>")) {
    return ChatFamily::kPhi3;
  } else if (Contains(jinja, "[INST]")) {
    if (Contains(jinja, "<<SYS>>")) return ChatFamily::kLlama2;
    if (Contains(jinja, "' [INST] '")) return ChatFamily::kMistral;
  }
  std::string excerpt = jinja.substr(0, 80);
  std::replace(excerpt.begin(), excerpt.end(), '\n', ' ');
  return Status::InvalidArgument("chat template not recognized (it starts '" +
                                 excerpt + (jinja.size() > 80 ? "...'" : "'") +
                                 "); set data.chat_template to one of " +
                                 Choices() +
                                 " if one of them lays out this model's turns");
}

StatusOr<ChatFamily> DetectChatTemplateFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, 64ull << 20));
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument("'" + path + "': not valid JSON (" +
                                   e.what() + ")");
  }
  if (!config.is_object()) {
    return Status::InvalidArgument("'" + path + "': expected a JSON object");
  }
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return ChatFamily::kAlpaca;
  std::string jinja;
  if (it->is_string()) {
    jinja = it->get<std::string>();
  } else if (it->is_array()) {  // [{"name": "default", "template": ...}]
    for (const auto& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" &&
          entry.contains("template") && entry["template"].is_string()) {
        jinja = entry["template"].get<std::string>();
      }
    }
  }
  if (jinja.empty()) {
    return Status::InvalidArgument(
        "'" + path +
        "': chat_template is neither a string nor a list with a 'default' "
        "template");
  }
  StatusOr<ChatFamily> family = DetectChatTemplate(jinja);
  if (!family.ok()) return family.status().WithContext("'" + path + "'");
  return family;
}

namespace {

// Renders `msgs` into `out` as `family`'s template does with
// add_generation_prompt false; checks roles and alternation.
Status CheckRoles(const std::vector<ChatMessage>& msgs) {
  if (msgs.empty()) return Status::InvalidArgument("messages: empty list");
  for (size_t i = 0; i < msgs.size(); ++i) {
    const std::string& r = msgs[i].role;
    if (r != "system" && r != "user" && r != "assistant") {
      return RoleError(i, msgs[i],
                       "unknown role; expected system, user or assistant");
    }
  }
  return Status::Ok();
}

Status RenderInto(ChatFamily family, const std::vector<ChatMessage>& msgs,
                  Layout* out) {
  RETURN_IF_ERROR(CheckRoles(msgs));
  const size_t first = msgs.front().role == "system" ? 1 : 0;
  switch (family) {
    case ChatFamily::kChatml:
      RenderChatml(msgs, nullptr, out);
      break;
    case ChatFamily::kQwen25:
      RenderChatml(msgs, kQwenSystem, out);
      break;
    case ChatFamily::kSmollm2:
      RenderChatml(msgs, kSmolSystem, out);
      break;
    case ChatFamily::kQwen3:
      RenderQwen3(msgs, out);
      break;
    case ChatFamily::kLlama3:
    case ChatFamily::kLlama31:
      RenderLlama3(msgs, family == ChatFamily::kLlama31, out);
      break;
    case ChatFamily::kLlama2:
      RETURN_IF_ERROR(CheckAlternation(msgs, first));
      RenderLlama2(msgs, first, out);
      break;
    case ChatFamily::kMistral:
      RETURN_IF_ERROR(CheckAlternation(msgs, first));
      RenderMistral(msgs, first, out);
      break;
    case ChatFamily::kGemma:
      RETURN_IF_ERROR(CheckAlternation(msgs, first));
      RenderGemma(msgs, first, out);
      break;
    case ChatFamily::kPhi3:
      RenderPhi3(msgs, out);
      break;
    case ChatFamily::kAlpaca:
      return Status::InvalidArgument(
          "messages: a list of messages needs a chat template; set "
          "data.chat_template to one of " +
          Choices());
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::vector<Segment>> RenderChat(
    ChatFamily family, const std::vector<ChatMessage>& msgs) {
  RETURN_IF_ERROR(CheckRoles(msgs));
  bool any_assistant = false;
  for (const ChatMessage& m : msgs) {
    any_assistant = any_assistant || m.role == "assistant";
  }
  if (!any_assistant) {
    return Status::InvalidArgument(
        "messages: no 'assistant' message, so nothing to train on");
  }
  Layout out;
  RETURN_IF_ERROR(RenderInto(family, msgs, &out));
  return out.Take();
}

StatusOr<std::string> RenderChatPrompt(ChatFamily family,
                                       const std::vector<ChatMessage>& msgs) {
  RETURN_IF_ERROR(CheckRoles(msgs));
  if (msgs.back().role != "user") {
    return RoleError(msgs.size() - 1, msgs.back(),
                     "the last message must be the user's, for the "
                     "assistant to answer");
  }
  Layout out;
  RETURN_IF_ERROR(RenderInto(family, msgs, &out));
  std::string text;
  for (const Segment& s : out.Take()) text += s.text;
  switch (family) {
    case ChatFamily::kChatml:
    case ChatFamily::kQwen25:
    case ChatFamily::kSmollm2:
    case ChatFamily::kQwen3:  // thinking on: no empty <think> block
      return text + "<|im_start|>assistant\n";
    case ChatFamily::kLlama3:
    case ChatFamily::kLlama31:
      return text + "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case ChatFamily::kGemma:
      return text + "<start_of_turn>model\n";
    case ChatFamily::kPhi3: {
      // The template ends with eos_token only without a generation prompt.
      const std::string eos = "<|endoftext|>";
      text.resize(text.size() - eos.size());
      return text + "<|assistant|>\n";
    }
    case ChatFamily::kLlama2:   // the templates have no generation prompt:
    case ChatFamily::kMistral:  // the answer follows [/INST]
    case ChatFamily::kAlpaca:
      break;
  }
  return text;
}

std::string EndOfTurnToken(ChatFamily family) {
  switch (family) {
    case ChatFamily::kChatml:
    case ChatFamily::kQwen25:
    case ChatFamily::kSmollm2:
    case ChatFamily::kQwen3:
      return "<|im_end|>";
    case ChatFamily::kLlama3:
    case ChatFamily::kLlama31:
      return "<|eot_id|>";
    case ChatFamily::kGemma:
      return "<end_of_turn>";
    case ChatFamily::kPhi3:
      return "<|end|>";
    case ChatFamily::kLlama2:
    case ChatFamily::kMistral:
      return "</s>";
    case ChatFamily::kAlpaca:
      break;
  }
  return "";
}

std::vector<SpecialToken> SpecialTokens(ChatFamily family) {
  switch (family) {
    case ChatFamily::kChatml:
    case ChatFamily::kQwen25:
    case ChatFamily::kSmollm2:
      return {{"<|im_start|>"}, {"<|im_end|>"}};
    case ChatFamily::kQwen3:
      return {{"<|im_start|>"},
              {"<|im_end|>"},
              {"<think>", false},
              {"</think>", false}};
    case ChatFamily::kLlama3:
    case ChatFamily::kLlama31:
      return {{"<|begin_of_text|>"},
              {"<|start_header_id|>"},
              {"<|end_header_id|>"},
              {"<|eot_id|>"}};
    case ChatFamily::kLlama2:
      return {{"<s>"}, {"</s>"}};
    case ChatFamily::kMistral:
      return {{"<s>"}, {"</s>"}, {"[INST]", false}, {"[/INST]", false}};
    case ChatFamily::kGemma:
      return {{"<bos>"}, {"<start_of_turn>"}, {"<end_of_turn>"}};
    case ChatFamily::kPhi3:
      return {{"<|system|>"},
              {"<|user|>"},
              {"<|assistant|>"},
              {"<|end|>"},
              {"<|endoftext|>"}};
    case ChatFamily::kAlpaca:
      break;
  }
  return {};
}

int64_t SpecialTokenId(ChatFamily family, const std::string& text,
                       const model::Tokenizer& tokenizer) {
  if (const int64_t id = tokenizer.TokenToId(text); id >= 0) return id;
  // A SentencePiece tokenizer.model knows its BOS/EOS only by id.
  const bool sentencepiece_family =
      family == ChatFamily::kLlama2 || family == ChatFamily::kMistral;
  if (text == "<s>" && sentencepiece_family) return tokenizer.bos_id();
  if (text == "</s>" && sentencepiece_family) return tokenizer.eos_id();
  if (text == "<bos>" && family == ChatFamily::kGemma) {
    return tokenizer.bos_id();
  }
  if (text == "<|begin_of_text|>" &&
      (family == ChatFamily::kLlama3 || family == ChatFamily::kLlama31)) {
    return tokenizer.bos_id();
  }
  return -1;
}

Status CheckChatTokenizer(ChatFamily family,
                          const model::Tokenizer& tokenizer) {
  for (const SpecialToken& s : SpecialTokens(family)) {
    if (s.required && SpecialTokenId(family, s.text, tokenizer) < 0) {
      return Status::InvalidArgument(
          "data.chat_template '" + ChatTemplateName(family) +
          "' writes the special token '" + s.text +
          "', which the tokenizer does not have; hint: this template is not "
          "this model's (set data.chat_template: alpaca for a base model)");
    }
  }
  return Status::Ok();
}

void EncodeSegments(ChatFamily family, const std::vector<Segment>& segments,
                    const model::Tokenizer& tokenizer,
                    std::vector<int64_t>* ids, std::vector<bool>* trains) {
  std::vector<std::pair<std::string, int64_t>> specials;
  for (const SpecialToken& s : SpecialTokens(family)) {
    const int64_t id = SpecialTokenId(family, s.text, tokenizer);
    if (id >= 0) specials.emplace_back(s.text, id);
  }
  // Longest first, so a special that prefixes another cannot shadow it.
  std::sort(specials.begin(), specials.end(), [](const auto& a, const auto& b) {
    return a.first.size() > b.first.size();
  });
  std::string text;
  std::vector<size_t> starts;  // start offset of each segment in `text`
  for (const Segment& s : segments) {
    starts.push_back(text.size());
    text += s.text;
  }
  auto segment_at = [&](size_t pos) {
    return static_cast<size_t>(
        std::upper_bound(starts.begin(), starts.end(), pos) - starts.begin() -
        1);
  };
  // Encodes text[begin, end), a run without specials.
  auto encode_run = [&](size_t begin, size_t end) {
    if (begin == end) return;
    const std::vector<int64_t> run =
        tokenizer.Encode(text.substr(begin, end - begin), false, false);
    size_t seg = segment_at(begin);
    size_t done = 0;  // tokens of `run` already assigned
    while (seg + 1 < segments.size() && starts[seg + 1] < end) {
      const size_t boundary = starts[seg + 1];
      const std::vector<int64_t> prefix =
          tokenizer.Encode(text.substr(begin, boundary - begin), false, false);
      size_t common = 0;
      while (common < prefix.size() && common < run.size() &&
             prefix[common] == run[common]) {
        ++common;
      }
      // A token straddling the boundary is not in the common prefix: it goes
      // to the later segment.
      for (; done < common; ++done) {
        ids->push_back(run[done]);
        trains->push_back(segments[seg].trains);
      }
      ++seg;
    }
    for (; done < run.size(); ++done) {
      ids->push_back(run[done]);
      trains->push_back(segments[seg].trains);
    }
  };
  size_t run_begin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const std::pair<std::string, int64_t>* hit = nullptr;
    for (const auto& s : specials) {
      if (text.compare(pos, s.first.size(), s.first) == 0) {
        hit = &s;
        break;
      }
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    encode_run(run_begin, pos);
    ids->push_back(hit->second);
    trains->push_back(segments[segment_at(pos)].trains);
    pos += hit->first.size();
    run_begin = pos;
  }
  encode_run(run_begin, text.size());
}

}  // namespace data
}  // namespace fedpeft
