#include "model/hf_tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <utility>

#include "common/file_util.h"
#include "model/bpe.h"
#include "model/hf_decoder.h"
#include "model/hf_json.h"
#include "model/normalizer.h"
#include "model/pre_tokenizer.h"
#include "model/utf8.h"

namespace fedpeft {
namespace model {
namespace {

using nlohmann::json;

// The codepoint ending just before byte `end` of `s` (valid UTF-8).
char32_t CodepointBefore(const std::string& s, size_t end, size_t* begin) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  *begin = b;
  const size_t len = utf8::ValidSequenceLength(s, b);
  return len == 0 ? 0xFFFD : utf8::Decode(s, b, len);
}

char32_t CodepointAt(const std::string& s, size_t i, size_t* len) {
  *len = utf8::ValidSequenceLength(s, i);
  if (*len == 0) {
    *len = 1;
    return 0xFFFD;
  }
  return utf8::Decode(s, i, *len);
}

// tokenizers' is_word_character: alphanumeric or '_'.
bool IsWordChar(char32_t c) {
  if (c == '_') return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

// A token named in tokenizer_config.json: "text" or {"content": "text"}.
std::string ConfigToken(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) {
      return content->get<std::string>();
    }
  }
  return "";
}

// Adds the post-processor's special tokens to *prefix / *suffix.
Status ParsePostProcessor(const json& spec, const std::string& where,
                          std::vector<int64_t>* prefix,
                          std::vector<int64_t>* suffix) {
  ASSIGN_OR_RETURN(std::string type, hf_json::Type(spec, where));
  if (type == "ByteLevel") return Status::Ok();  // offsets only
  if (type == "TemplateProcessing") {
    ASSIGN_OR_RETURN(const json* single, hf_json::Array(spec, "single", where));
    auto specials = spec.find("special_tokens");
    bool seen_sequence = false;
    for (size_t i = 0; i < single->size(); ++i) {
      const json& item = (*single)[i];
      const std::string at = where + ".single[" + std::to_string(i) + "]";
      if (item.is_object() && item.contains("Sequence")) {
        seen_sequence = true;
        continue;
      }
      if (!item.is_object() || !item.contains("SpecialToken") ||
          !item["SpecialToken"].is_object() ||
          !item["SpecialToken"].contains("id") ||
          !item["SpecialToken"]["id"].is_string()) {
        return Status::InvalidArgument(
            at +
            ": expected {\"SpecialToken\": {\"id\": ...}} or "
            "{\"Sequence\": ...}");
      }
      const std::string name = item["SpecialToken"]["id"].get<std::string>();
      if (specials == spec.end() || !specials->is_object() ||
          !specials->contains(name) || !(*specials)[name].contains("ids") ||
          !(*specials)[name]["ids"].is_array()) {
        return Status::InvalidArgument(at + ": special token \"" + name +
                                       "\" has no ids in " + where +
                                       ".special_tokens");
      }
      for (const json& id : (*specials)[name]["ids"]) {
        if (!id.is_number_integer()) {
          return Status::InvalidArgument(where + ".special_tokens[\"" + name +
                                         "\"].ids: expected integers");
        }
        (seen_sequence ? suffix : prefix)->push_back(id.get<int64_t>());
      }
    }
    return Status::Ok();
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    for (const char* key : {"cls", "sep"}) {
      auto it = spec.find(key);
      if (it == spec.end() || !it->is_array() || it->size() != 2 ||
          !(*it)[1].is_number_integer()) {
        return Status::InvalidArgument(where + "." + key +
                                       ": expected [token, id]");
      }
      (std::string(key) == "cls" ? prefix : suffix)
          ->push_back((*it)[1].get<int64_t>());
    }
    return Status::Ok();
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const json* list,
                     hf_json::Array(spec, "processors", where));
    for (size_t i = 0; i < list->size(); ++i) {
      RETURN_IF_ERROR(ParsePostProcessor(
          (*list)[i], where + ".processors[" + std::to_string(i) + "]", prefix,
          suffix));
    }
    return Status::Ok();
  }
  return hf_json::Unsupported(
      where, type,
      {"TemplateProcessing", "ByteLevel", "RobertaProcessing", "BertProcessing",
       "Sequence"});
}

}  // namespace

HfTokenizer::HfTokenizer() = default;
HfTokenizer::~HfTokenizer() = default;

StatusOr<std::unique_ptr<HfTokenizer>> HfTokenizer::Parse(
    const std::string& text, const std::string& name,
    const std::string& config_text) {
  json root;
  try {
    root = json::parse(text);
  } catch (const std::exception& e) {
    return Status::Corruption(name + ": not valid JSON: " + e.what());
  }
  json config = json::object();
  if (!config_text.empty()) {
    try {
      config = json::parse(config_text);
    } catch (const std::exception& e) {
      return Status::Corruption(name +
                                ": tokenizer_config.json beside it is not "
                                "valid JSON: " +
                                e.what());
    }
  }
  if (!root.is_object()) {
    return Status::InvalidArgument(name + ": expected a JSON object, got " +
                                   std::string(root.type_name()));
  }
  std::unique_ptr<HfTokenizer> t(new HfTokenizer());
  // nlohmann throws on a type mismatch we did not check; say where.
  try {
    auto component = [&root](const char* key) -> const json* {
      auto it = root.find(key);
      return it == root.end() || it->is_null() ? nullptr : &*it;
    };
    auto context = [&name](const Status& s) { return s.WithContext(name); };

    const json* model = component("model");
    if (model == nullptr) {
      return Status::InvalidArgument(name + ": model: missing");
    }
    std::string model_type = "BPE";
    if (model->is_object() && model->contains("type")) {
      StatusOr<std::string> type = hf_json::Type(*model, "model");
      if (!type.ok()) return context(type.status());
      model_type = *type;
    }
    if (model_type != "BPE") {
      return context(hf_json::Unsupported("model", model_type, {"BPE"}));
    }
    StatusOr<std::unique_ptr<BpeModel>> bpe = BpeModel::Parse(*model, "model");
    if (!bpe.ok()) return context(bpe.status());
    t->model_ = std::move(bpe).value();

    if (const json* spec = component("normalizer")) {
      auto n = ParseNormalizer(*spec, "normalizer");
      if (!n.ok()) return context(n.status());
      t->normalizer_ = std::move(n).value();
    }
    if (const json* spec = component("pre_tokenizer")) {
      auto p = ParsePreTokenizer(*spec, "pre_tokenizer");
      if (!p.ok()) return context(p.status());
      t->pre_tokenizer_ = std::move(p).value();
    }
    if (const json* spec = component("decoder")) {
      auto d = ParseHfDecoder(*spec, "decoder");
      if (!d.ok()) return context(d.status());
      t->decoder_ = std::move(d).value();
    }
    if (const json* spec = component("post_processor")) {
      Status s = ParsePostProcessor(*spec, "post_processor", &t->prefix_ids_,
                                    &t->suffix_ids_);
      if (!s.ok()) return context(s);
    }

    int64_t limit = t->model_->id_limit();
    if (const json* added = component("added_tokens")) {
      if (!added->is_array()) {
        return Status::InvalidArgument(name + ": added_tokens: not an array");
      }
      for (size_t i = 0; i < added->size(); ++i) {
        const json& a = (*added)[i];
        const std::string at = "added_tokens[" + std::to_string(i) + "]";
        AddedToken token;
        if (!a.is_object() || !a.contains("id") ||
            !a["id"].is_number_integer() || !a.contains("content") ||
            !a["content"].is_string()) {
          return Status::InvalidArgument(name + ": " + at +
                                         ": expected {\"id\": int, "
                                         "\"content\": string, ...}");
        }
        token.id = a["id"].get<int64_t>();
        token.content = a["content"].get<std::string>();
        if (token.id < 0 || token.id >= kMaxTokenizerPieces) {
          return Status::InvalidArgument(
              name + ": " + at + ".id " + std::to_string(token.id) +
              " is outside [0, " + std::to_string(kMaxTokenizerPieces) + ")");
        }
        if (token.content.empty() || !utf8::IsValid(token.content)) {
          return Status::InvalidArgument(name + ": " + at +
                                         ".content: empty or not UTF-8");
        }
        for (auto [key, field] :
             {std::make_pair("special", &token.special),
              std::make_pair("lstrip", &token.lstrip),
              std::make_pair("rstrip", &token.rstrip),
              std::make_pair("single_word", &token.single_word),
              std::make_pair("normalized", &token.normalized)}) {
          StatusOr<bool> v = hf_json::Bool(a, key, at, false);
          if (!v.ok()) return context(v.status());
          *field = *v;
        }
        limit = std::max(limit, token.id + 1);
        t->added_by_id_[token.id] = t->added_.size();
        t->added_by_content_[token.content] = token.id;
        t->added_.push_back(std::move(token));
      }
    }
    t->vocab_size_ = limit;
    for (size_t i = 0; i < t->added_.size(); ++i) {
      (t->added_[i].normalized ? t->normalized_added_ : t->raw_added_)
          .push_back(i);
    }
    for (auto* list : {&t->raw_added_, &t->normalized_added_}) {
      std::stable_sort(list->begin(), list->end(), [&t](size_t a, size_t b) {
        return t->added_[a].content.size() > t->added_[b].content.size();
      });
    }
    for (int64_t id : t->prefix_ids_) {
      if (id < 0 || id >= limit) {
        return Status::InvalidArgument(
            name + ": post_processor: special token id " + std::to_string(id) +
            " is outside the vocabulary [0, " + std::to_string(limit) + ")");
      }
    }
    for (int64_t id : t->suffix_ids_) {
      if (id < 0 || id >= limit) {
        return Status::InvalidArgument(
            name + ": post_processor: special token id " + std::to_string(id) +
            " is outside the vocabulary [0, " + std::to_string(limit) + ")");
      }
    }
  } catch (const json::exception& e) {
    return Status::InvalidArgument(name +
                                   ": unexpected structure: " + e.what());
  }

  // BOS / EOS / pad: tokenizer_config.json decides when it names them.
  auto resolve = [&](const char* key, int64_t fallback) -> StatusOr<int64_t> {
    if (!config.is_object() || !config.contains(key)) return fallback;
    const std::string token = ConfigToken(config, key);
    if (token.empty()) return int64_t{-1};  // null: the model has none
    const int64_t id = t->TokenToId(token);
    if (id < 0) {
      return Status::InvalidArgument(
          name + ": tokenizer_config.json's " + key + " \"" + token +
          "\" is not a token of this tokenizer; hint: the two files do not "
          "belong together?");
    }
    return id;
  };
  const int64_t template_bos =
      t->prefix_ids_.empty() ? -1 : t->prefix_ids_.front();
  ASSIGN_OR_RETURN(t->bos_id_, resolve("bos_token", template_bos));
  ASSIGN_OR_RETURN(t->eos_id_, resolve("eos_token", -1));
  ASSIGN_OR_RETURN(t->pad_id_, resolve("pad_token", -1));
  return t;
}

int64_t HfTokenizer::TokenToId(const std::string& token) const {
  auto added = added_by_content_.find(token);
  if (added != added_by_content_.end()) return added->second;
  std::optional<int64_t> id = model_->TokenToId(token);
  return id ? *id : -1;
}

template <typename OnText, typename OnToken>
void HfTokenizer::SplitAdded(const std::string& text,
                             const std::vector<size_t>& tokens,
                             bool starts_input, OnText on_text,
                             OnToken on_token) const {
  if (tokens.empty()) {
    on_text(text, starts_input);
    return;
  }
  // First bytes of any token, to skip most positions at once.
  bool first_byte[256] = {};
  for (size_t k : tokens) {
    first_byte[static_cast<unsigned char>(added_[k].content[0])] = true;
  }
  size_t start_offset = 0;  // text not yet emitted begins here
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    const AddedToken* match = nullptr;
    for (size_t k : tokens) {  // longest first: leftmost-longest
      const std::string& c = added_[k].content;
      if (text.compare(pos, c.size(), c) == 0) {
        match = &added_[k];
        break;
      }
    }
    if (match == nullptr) {
      ++pos;
      continue;
    }
    size_t start = pos;
    size_t stop = pos + match->content.size();
    if (match->single_word) {
      size_t b = 0;
      size_t len = 0;
      const bool before_ok =
          start == 0 || !IsWordChar(CodepointBefore(text, start, &b));
      const bool after_ok =
          stop == text.size() || !IsWordChar(CodepointAt(text, stop, &len));
      if (!before_ok || !after_ok) {
        pos = stop;  // as tokenizers: the match is dropped, not retried
        continue;
      }
    }
    if (match->lstrip) {
      while (start > start_offset) {
        size_t b = 0;
        if (!utf8::IsWhitespace(CodepointBefore(text, start, &b))) break;
        start = b;
      }
    }
    if (match->rstrip) {
      while (stop < text.size()) {
        size_t len = 0;
        if (!utf8::IsWhitespace(CodepointAt(text, stop, &len))) break;
        stop += len;
      }
    }
    if (start > start_offset) {
      on_text(text.substr(start_offset, start - start_offset),
              starts_input && start_offset == 0);
    }
    on_token(match->id);
    start_offset = stop;
    pos = stop;
  }
  if (start_offset < text.size()) {
    on_text(text.substr(start_offset), starts_input && start_offset == 0);
  }
}

void HfTokenizer::EncodeSegment(const std::string& text, bool starts_input,
                                std::vector<int64_t>* ids) const {
  std::vector<std::string> pieces{text};
  if (pre_tokenizer_) pre_tokenizer_->Split(&pieces, starts_input);
  for (const std::string& piece : pieces) model_->Tokenize(piece, ids);
}

void HfTokenizer::EncodeText(const std::string& text,
                             std::vector<int64_t>* ids) const {
  auto push_id = [ids](int64_t id) { ids->push_back(id); };
  SplitAdded(
      text, raw_added_, /*starts_input=*/true,
      [&](const std::string& segment, bool starts_input) {
        std::string normalized = segment;
        if (normalizer_) normalizer_->Normalize(&normalized);
        SplitAdded(
            normalized, normalized_added_, starts_input,
            [&](const std::string& part, bool first) {
              EncodeSegment(part, first, ids);
            },
            push_id);
      },
      push_id);
}

std::vector<int64_t> HfTokenizer::Encode(const std::string& text, bool add_bos,
                                         bool add_eos) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  EncodeText(utf8::Sanitize(text), &ids);
  if (add_eos && eos_id_ >= 0) ids.push_back(eos_id_);
  return ids;
}

std::vector<int64_t> HfTokenizer::Encode(const std::string& text,
                                         bool add_special_tokens) const {
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_special_tokens) {
    ids.insert(ids.end(), prefix_ids_.begin(), prefix_ids_.end());
  }
  EncodeText(utf8::Sanitize(text), &ids);
  if (add_special_tokens) {
    ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
  }
  return ids;
}

std::string HfTokenizer::Decode(const std::vector<int64_t>& ids) const {
  return Decode(ids, /*skip_special_tokens=*/true);
}

std::string HfTokenizer::Decode(const std::vector<int64_t>& ids,
                                bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    auto added = added_by_id_.find(id);
    if (added != added_by_id_.end()) {
      const AddedToken& token = added_[added->second];
      if (!(skip_special_tokens && token.special)) {
        tokens.push_back(token.content);
      }
      continue;
    }
    if (const std::string* token = model_->IdToToken(id)) {
      tokens.push_back(*token);
    }
  }
  if (decoder_ == nullptr) {
    // tokenizers joins the tokens with spaces when there is no decoder.
    std::string text;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) text += ' ';
      text += tokens[i];
    }
    return text;
  }
  decoder_->Decode(&tokens);
  std::string text;
  for (const std::string& t : tokens) text += t;
  return text;
}

StatusOr<std::unique_ptr<HfTokenizer>> LoadHfTokenizer(
    const std::string& path) {
  StatusOr<std::string> data = ReadFileToString(path, kMaxTokenizerFileBytes);
  if (!data.ok()) return data.status().WithContext("tokenizer");
  std::string config;
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  const std::string config_path = JoinPath(dir, "tokenizer_config.json");
  if (PathExists(config_path) && !IsDirectory(config_path)) {
    StatusOr<std::string> c =
        ReadFileToString(config_path, kMaxTokenizerFileBytes);
    if (!c.ok()) return c.status().WithContext("tokenizer config");
    config = std::move(c).value();
  }
  return HfTokenizer::Parse(*data, path, config);
}

}  // namespace model
}  // namespace fedpeft
