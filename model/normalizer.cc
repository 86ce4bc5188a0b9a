#include "model/normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "model/hf_json.h"
#include "model/regex.h"
#include "model/utf8.h"

namespace fedpeft {
namespace model {
namespace {

bool IsAscii(const std::string& s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

// NFC, NFD, NFKC, NFKD through utf8proc_map (which takes a length, so NUL
// bytes in the text survive). ASCII is its own normal form in all four.
class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(int options) : options_(options) {}
  void Normalize(std::string* text) const override {
    if (IsAscii(*text)) return;
    utf8proc_uint8_t* out = nullptr;
    const utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text->data()),
                     static_cast<utf8proc_ssize_t>(text->size()), &out,
                     static_cast<utf8proc_option_t>(options_));
    // n < 0 only for invalid UTF-8 or out of memory; the text was validated
    // before, so keep it as it is in either case.
    if (n >= 0) text->assign(reinterpret_cast<char*>(out), n);
    std::free(out);
  }

 private:
  int options_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::string pattern, std::unique_ptr<Regex> regex,
                    std::string content)
      : pattern_(std::move(pattern)),
        regex_(std::move(regex)),
        content_(std::move(content)) {}
  void Normalize(std::string* text) const override {
    std::vector<std::pair<size_t, size_t>> matches;
    if (regex_) {
      matches = regex_->FindAll(*text);
    } else if (!pattern_.empty()) {
      for (size_t pos = text->find(pattern_); pos != std::string::npos;
           pos = text->find(pattern_, pos + pattern_.size())) {
        matches.emplace_back(pos, pos + pattern_.size());
      }
    }
    if (matches.empty()) return;
    std::string out;
    out.reserve(text->size() + matches.size() * content_.size());
    size_t last = 0;
    for (const auto& [b, e] : matches) {
      out.append(*text, last, b - last);
      out += content_;
      last = e;
    }
    out.append(*text, last, std::string::npos);
    *text = std::move(out);
  }

 private:
  std::string pattern_;
  std::unique_ptr<Regex> regex_;  // null: `pattern_` is a literal string
  std::string content_;
};

// HF's Prepend leaves an empty string empty.
class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(std::string* text) const override {
    size_t begin = 0;
    size_t end = 0;
    size_t last_non_space_end = 0;
    bool seen_non_space = false;
    for (size_t i = 0; i < text->size();) {
      const size_t len = utf8::ValidSequenceLength(*text, i);
      const size_t step = len == 0 ? 1 : len;
      const char32_t c = len == 0 ? 0xFFFD : utf8::Decode(*text, i, len);
      if (!utf8::IsWhitespace(c)) {
        if (!seen_non_space) begin = i;
        seen_non_space = true;
        last_non_space_end = i + step;
      }
      i += step;
    }
    if (!seen_non_space) {
      if (left_ || right_) text->clear();
      return;
    }
    if (!left_) begin = 0;
    end = right_ ? last_non_space_end : text->size();
    *text = text->substr(begin, end - begin);
  }

 private:
  bool left_;
  bool right_;
};

// Per-codepoint lowercase (utf8proc's simple case mapping; Rust's
// to_lowercase differs only for the few codepoints whose lowercase is
// several codepoints, such as U+0130).
class LowercaseNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override {
    std::string out;
    out.reserve(text->size());
    for (size_t i = 0; i < text->size();) {
      const size_t len = utf8::ValidSequenceLength(*text, i);
      if (len == 0) {
        out.push_back((*text)[i++]);
        continue;
      }
      utf8::Append(
          static_cast<char32_t>(utf8proc_tolower(
              static_cast<utf8proc_int32_t>(utf8::Decode(*text, i, len)))),
          &out);
      i += len;
    }
    *text = std::move(out);
  }
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void Normalize(std::string* text) const override {
    for (const auto& part : parts_) part->Normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(
    const nlohmann::json& spec, const std::string& where) {
  ASSIGN_OR_RETURN(std::string type, hf_json::Type(spec, where));
  if (type == "NFC") {
    return std::unique_ptr<Normalizer>(
        new UnicodeNormalizer(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  }
  if (type == "NFD") {
    return std::unique_ptr<Normalizer>(
        new UnicodeNormalizer(UTF8PROC_STABLE | UTF8PROC_DECOMPOSE));
  }
  if (type == "NFKC") {
    return std::unique_ptr<Normalizer>(new UnicodeNormalizer(
        UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT));
  }
  if (type == "NFKD") {
    return std::unique_ptr<Normalizer>(new UnicodeNormalizer(
        UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT));
  }
  if (type == "Replace") {
    bool is_regex = false;
    std::string text;
    RETURN_IF_ERROR(hf_json::Pattern(spec, where, &is_regex, &text));
    ASSIGN_OR_RETURN(std::string content,
                     hf_json::String(spec, "content", where));
    std::unique_ptr<Regex> regex;
    if (is_regex) {
      StatusOr<Regex> compiled = Regex::Compile(text);
      if (!compiled.ok()) {
        return compiled.status().WithContext(where + ".pattern");
      }
      regex = std::make_unique<Regex>(std::move(compiled).value());
    }
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(
        std::move(text), std::move(regex), std::move(content)));
  }
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prefix,
                     hf_json::String(spec, "prepend", where));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(prefix));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(bool left, hf_json::Bool(spec, "strip_left", where, true));
    ASSIGN_OR_RETURN(bool right,
                     hf_json::Bool(spec, "strip_right", where, true));
    return std::unique_ptr<Normalizer>(new StripNormalizer(left, right));
  }
  if (type == "Lowercase") {
    return std::unique_ptr<Normalizer>(new LowercaseNormalizer());
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const nlohmann::json* list,
                     hf_json::Array(spec, "normalizers", where));
    std::vector<std::unique_ptr<Normalizer>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(
          auto part, ParseNormalizer((*list)[i], where + ".normalizers[" +
                                                     std::to_string(i) + "]"));
      parts.push_back(std::move(part));
    }
    return std::unique_ptr<Normalizer>(
        new SequenceNormalizer(std::move(parts)));
  }
  return hf_json::Unsupported(where, type,
                              {"NFC", "NFD", "NFKC", "NFKD", "Replace",
                               "Prepend", "Strip", "Lowercase", "Sequence"});
}

}  // namespace model
}  // namespace fedpeft
