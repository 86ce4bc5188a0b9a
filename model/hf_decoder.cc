#include "model/hf_decoder.h"

#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

#include "common/text.h"
#include "model/hf_json.h"
#include "model/pre_tokenizer.h"
#include "model/utf8.h"

namespace fedpeft {
namespace model {
namespace {

constexpr char kReplacementChar[] = "\xEF\xBF\xBD";

class ByteLevelDecoder : public HfDecoder {
 public:
  ByteLevelDecoder() {
    const std::vector<std::string>& map = ByteToUnicode();
    for (int b = 0; b < 256; ++b) {
      const std::string& s = map[b];
      byte_of_[utf8::Decode(s, 0, s.size())] = static_cast<char>(b);
    }
  }
  // Codepoints outside the map (an added token's text) pass through.
  void Decode(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& token : *tokens) {
      for (size_t i = 0; i < token.size();) {
        size_t len = utf8::ValidSequenceLength(token, i);
        if (len == 0) len = 1;
        auto it = byte_of_.find(utf8::Decode(token, i, len));
        if (it != byte_of_.end()) {
          bytes.push_back(it->second);
        } else {
          bytes.append(token, i, len);
        }
        i += len;
      }
    }
    // tokenizers returns String::from_utf8_lossy of the bytes.
    *tokens = {utf8::Sanitize(bytes)};
  }

 private:
  std::unordered_map<char32_t, char> byte_of_;
};

bool ParseByteToken(const std::string& t, unsigned char* byte) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return false;
  int value = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = t[i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return false;
    }
    value = value * 16 + d;
  }
  *byte = static_cast<unsigned char>(value);
  return true;
}

class ByteFallbackDecoder : public HfDecoder {
 public:
  void Decode(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    std::string run;
    size_t run_tokens = 0;
    auto flush = [&]() {
      if (run_tokens == 0) return;
      if (utf8::IsValid(run)) {
        out.push_back(run);
      } else {
        for (size_t i = 0; i < run_tokens; ++i) out.push_back(kReplacementChar);
      }
      run.clear();
      run_tokens = 0;
    };
    for (std::string& token : *tokens) {
      unsigned char byte = 0;
      if (ParseByteToken(token, &byte)) {
        run.push_back(static_cast<char>(byte));
        ++run_tokens;
      } else {
        flush();
        out.push_back(std::move(token));
      }
    }
    flush();
    *tokens = std::move(out);
  }
};

class FuseDecoder : public HfDecoder {
 public:
  void Decode(std::vector<std::string>* tokens) const override {
    std::string all;
    for (const std::string& t : *tokens) all += t;
    *tokens = {std::move(all)};
  }
};

class StripDecoder : public HfDecoder {
 public:
  StripDecoder(std::string content, int64_t start, int64_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void Decode(std::vector<std::string>* tokens) const override {
    if (content_.empty()) return;
    for (std::string& t : *tokens) {
      size_t b = 0;
      for (int64_t i = 0;
           i < start_ && t.compare(b, content_.size(), content_) == 0; ++i) {
        b += content_.size();
      }
      size_t e = t.size();
      for (int64_t i = 0;
           i < stop_ && e >= b + content_.size() &&
           t.compare(e - content_.size(), content_.size(), content_) == 0;
           ++i) {
        e -= content_.size();
      }
      t = t.substr(b, e - b);
    }
  }

 private:
  std::string content_;
  int64_t start_;
  int64_t stop_;
};

class ReplaceDecoder : public HfDecoder {
 public:
  ReplaceDecoder(std::string from, std::string to)
      : from_(std::move(from)), to_(std::move(to)) {}
  void Decode(std::vector<std::string>* tokens) const override {
    for (std::string& t : *tokens) t = ReplaceAll(t, from_, to_);
  }

 private:
  std::string from_;
  std::string to_;
};

class MetaspaceDecoder : public HfDecoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void Decode(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string t = ReplaceAll((*tokens)[i], replacement_, " ");
      if (i == 0 && strip_first_ && !t.empty() && t[0] == ' ') t.erase(0, 1);
      (*tokens)[i] = std::move(t);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class SequenceDecoder : public HfDecoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<HfDecoder>> parts)
      : parts_(std::move(parts)) {}
  void Decode(std::vector<std::string>* tokens) const override {
    for (const auto& part : parts_) part->Decode(tokens);
  }

 private:
  std::vector<std::unique_ptr<HfDecoder>> parts_;
};

}  // namespace

StatusOr<std::unique_ptr<HfDecoder>> ParseHfDecoder(const nlohmann::json& spec,
                                                    const std::string& where) {
  ASSIGN_OR_RETURN(std::string type, hf_json::Type(spec, where));
  if (type == "ByteLevel") {
    return std::unique_ptr<HfDecoder>(new ByteLevelDecoder());
  }
  if (type == "ByteFallback") {
    return std::unique_ptr<HfDecoder>(new ByteFallbackDecoder());
  }
  if (type == "Fuse") return std::unique_ptr<HfDecoder>(new FuseDecoder());
  if (type == "Strip") {
    ASSIGN_OR_RETURN(std::string content,
                     hf_json::String(spec, "content", where, " "));
    ASSIGN_OR_RETURN(int64_t start, hf_json::Int(spec, "start", where, 0));
    ASSIGN_OR_RETURN(int64_t stop, hf_json::Int(spec, "stop", where, 0));
    return std::unique_ptr<HfDecoder>(new StripDecoder(content, start, stop));
  }
  if (type == "Replace") {
    bool is_regex = false;
    std::string from;
    RETURN_IF_ERROR(hf_json::Pattern(spec, where, &is_regex, &from));
    if (is_regex) {
      return Status::Unimplemented(where +
                                   ".pattern: a Regex pattern in a Replace "
                                   "decoder is not supported, only String");
    }
    ASSIGN_OR_RETURN(std::string to, hf_json::String(spec, "content", where));
    return std::unique_ptr<HfDecoder>(new ReplaceDecoder(from, to));
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(
        std::string replacement,
        hf_json::String(spec, "replacement", where, "\xE2\x96\x81"));
    ASSIGN_OR_RETURN(bool add_prefix,
                     hf_json::Bool(spec, "add_prefix_space", where, true));
    ASSIGN_OR_RETURN(std::string scheme,
                     hf_json::String(spec, "prepend_scheme", where,
                                     add_prefix ? "always" : "never"));
    return std::unique_ptr<HfDecoder>(
        new MetaspaceDecoder(replacement, scheme != "never"));
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const nlohmann::json* list,
                     hf_json::Array(spec, "decoders", where));
    std::vector<std::unique_ptr<HfDecoder>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto part,
                       ParseHfDecoder((*list)[i], where + ".decoders[" +
                                                      std::to_string(i) + "]"));
      parts.push_back(std::move(part));
    }
    return std::unique_ptr<HfDecoder>(new SequenceDecoder(std::move(parts)));
  }
  return hf_json::Unsupported(where, type,
                              {"ByteLevel", "ByteFallback", "Fuse", "Strip",
                               "Replace", "Metaspace", "Sequence"});
}

}  // namespace model
}  // namespace fedpeft
