#include "model/pre_tokenizer.h"

#include <nlohmann/json.hpp>
#include <utility>

#include "model/hf_json.h"
#include "model/regex.h"
#include "model/utf8.h"

namespace fedpeft {
namespace model {
namespace {

// GPT-2's pre-tokenization pattern, as tokenizers' ByteLevel uses it.
constexpr char kGpt2Pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|"
    "\\s+(?!\\S)|\\s+";

enum class Behavior {
  kRemoved,
  kIsolated,
  kMergedWithPrevious,
  kMergedWithNext,
  kContiguous
};

// Cuts `piece` at `matches` ([begin, end) ranges, sorted, disjoint) as
// tokenizers' SplitDelimiterBehavior does; appends the non-empty results.
void CutAt(const std::string& piece,
           const std::vector<std::pair<size_t, size_t>>& matches,
           Behavior behavior, bool invert, std::vector<std::string>* out) {
  // Alternating (range, is_match) spans covering the piece.
  struct Span {
    size_t b, e;
    bool match;
  };
  std::vector<Span> spans;
  size_t last = 0;
  for (const auto& [b, e] : matches) {
    if (b > last) spans.push_back({last, b, invert});
    spans.push_back({b, e, !invert});
    last = e;
  }
  if (last < piece.size()) spans.push_back({last, piece.size(), invert});

  std::vector<std::pair<size_t, size_t>> cut;  // ranges to emit
  bool pending_next = false;  // MergedWithNext: a delimiter waits
  size_t pending_begin = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    const Span& s = spans[i];
    switch (behavior) {
      case Behavior::kRemoved:
        if (!s.match) cut.emplace_back(s.b, s.e);
        break;
      case Behavior::kIsolated:
        cut.emplace_back(s.b, s.e);
        break;
      case Behavior::kContiguous:
        if (s.match && !cut.empty() && i > 0 && spans[i - 1].match) {
          cut.back().second = s.e;
        } else {
          cut.emplace_back(s.b, s.e);
        }
        break;
      case Behavior::kMergedWithPrevious:
        if (s.match && !cut.empty() && i > 0 && !spans[i - 1].match) {
          cut.back().second = s.e;
        } else {
          cut.emplace_back(s.b, s.e);
        }
        break;
      case Behavior::kMergedWithNext:
        if (s.match) {
          if (pending_next) cut.emplace_back(pending_begin, s.b);
          pending_next = true;
          pending_begin = s.b;
        } else if (pending_next) {
          cut.emplace_back(pending_begin, s.e);
          pending_next = false;
        } else {
          cut.emplace_back(s.b, s.e);
        }
        break;
    }
  }
  if (pending_next) cut.emplace_back(pending_begin, piece.size());
  for (const auto& [b, e] : cut) {
    if (e > b) out->push_back(piece.substr(b, e - b));
  }
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::string literal, std::unique_ptr<Regex> regex,
                    Behavior behavior, bool invert)
      : literal_(std::move(literal)),
        regex_(std::move(regex)),
        behavior_(behavior),
        invert_(invert) {}

  void Split(std::vector<std::string>* pieces, bool) const override {
    std::vector<std::string> out;
    out.reserve(pieces->size() * 2);
    for (const std::string& piece : *pieces) {
      std::vector<std::pair<size_t, size_t>> matches;
      if (regex_) {
        matches = regex_->FindAll(piece);
      } else if (!literal_.empty()) {
        for (size_t p = piece.find(literal_); p != std::string::npos;
             p = piece.find(literal_, p + literal_.size())) {
          matches.emplace_back(p, p + literal_.size());
        }
      }
      CutAt(piece, matches, behavior_, invert_, &out);
    }
    *pieces = std::move(out);
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;  // null: split on `literal_`
  Behavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  void Split(std::vector<std::string>* pieces, bool) const override {
    std::vector<std::string> split;
    for (std::string& piece : *pieces) {
      if (add_prefix_space_ && (piece.empty() || piece[0] != ' ')) {
        piece.insert(0, " ");
      }
      if (regex_) {
        CutAt(piece, regex_->FindAll(piece), Behavior::kIsolated, false,
              &split);
      } else if (!piece.empty()) {
        split.push_back(std::move(piece));
      }
    }
    const std::vector<std::string>& map = ByteToUnicode();
    for (std::string& piece : split) {
      std::string mapped;
      mapped.reserve(piece.size() * 2);
      for (unsigned char c : piece) mapped += map[c];
      piece = std::move(mapped);
    }
    *pieces = std::move(split);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // GPT-2's pattern, or null (use_regex off)
};

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  enum class Prepend { kAlways, kFirst, kNever };
  MetaspacePreTokenizer(std::string replacement, Prepend prepend, bool split)
      : replacement_(std::move(replacement)),
        prepend_(prepend),
        split_(split) {}

  void Split(std::vector<std::string>* pieces,
             bool first_section) const override {
    std::vector<std::string> out;
    for (size_t i = 0; i < pieces->size(); ++i) {
      std::string piece;
      const std::string& in = (*pieces)[i];
      piece.reserve(in.size() + 8);
      for (char c : in) {
        if (c == ' ') {
          piece += replacement_;
        } else {
          piece.push_back(c);
        }
      }
      const bool prepend =
          prepend_ == Prepend::kAlways ||
          (prepend_ == Prepend::kFirst && first_section && i == 0);
      if (prepend && piece.compare(0, replacement_.size(), replacement_) != 0) {
        piece.insert(0, replacement_);
      }
      if (!split_) {
        if (!piece.empty()) out.push_back(std::move(piece));
        continue;
      }
      std::vector<std::pair<size_t, size_t>> matches;
      for (size_t p = piece.find(replacement_); p != std::string::npos;
           p = piece.find(replacement_, p + replacement_.size())) {
        matches.emplace_back(p, p + replacement_.size());
      }
      CutAt(piece, matches, Behavior::kMergedWithNext, false, &out);
    }
    *pieces = std::move(out);
  }

 private:
  std::string replacement_;
  Prepend prepend_;
  bool split_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> p)
      : parts_(std::move(p)) {}
  void Split(std::vector<std::string>* pieces,
             bool first_section) const override {
    for (const auto& part : parts_) part->Split(pieces, first_section);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

StatusOr<std::unique_ptr<Regex>> CompileAt(const std::string& pattern,
                                           const std::string& where) {
  StatusOr<Regex> compiled = Regex::Compile(pattern);
  if (!compiled.ok()) return compiled.status().WithContext(where);
  return std::make_unique<Regex>(std::move(compiled).value());
}

StatusOr<std::unique_ptr<PreTokenizer>> RegexSplit(const std::string& pattern,
                                                   Behavior behavior,
                                                   bool invert,
                                                   const std::string& where) {
  ASSIGN_OR_RETURN(auto regex, CompileAt(pattern, where));
  return std::unique_ptr<PreTokenizer>(
      new SplitPreTokenizer("", std::move(regex), behavior, invert));
}

}  // namespace

const std::vector<std::string>& ByteToUnicode() {
  static const std::vector<std::string>* const kMap = [] {
    auto* map = new std::vector<std::string>(256);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable =
          (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t cp = printable ? b : 256 + extra++;
      utf8::Append(cp, &(*map)[b]);
    }
    return map;
  }();
  return *kMap;
}

StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(
    const nlohmann::json& spec, const std::string& where) {
  ASSIGN_OR_RETURN(std::string type, hf_json::Type(spec, where));
  if (type == "Split") {
    bool is_regex = false;
    std::string text;
    RETURN_IF_ERROR(hf_json::Pattern(spec, where, &is_regex, &text));
    ASSIGN_OR_RETURN(std::string name,
                     hf_json::String(spec, "behavior", where, "Isolated"));
    ASSIGN_OR_RETURN(bool invert, hf_json::Bool(spec, "invert", where, false));
    Behavior behavior;
    if (name == "Removed") {
      behavior = Behavior::kRemoved;
    } else if (name == "Isolated") {
      behavior = Behavior::kIsolated;
    } else if (name == "MergedWithPrevious") {
      behavior = Behavior::kMergedWithPrevious;
    } else if (name == "MergedWithNext") {
      behavior = Behavior::kMergedWithNext;
    } else if (name == "Contiguous") {
      behavior = Behavior::kContiguous;
    } else {
      return Status::InvalidArgument(
          where + ".behavior \"" + name +
          "\" is not one of Removed, Isolated, MergedWithPrevious, "
          "MergedWithNext, Contiguous");
    }
    if (is_regex) {
      return RegexSplit(text, behavior, invert, where + ".pattern");
    }
    return std::unique_ptr<PreTokenizer>(
        new SplitPreTokenizer(text, nullptr, behavior, invert));
  }
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(bool prefix,
                     hf_json::Bool(spec, "add_prefix_space", where, true));
    ASSIGN_OR_RETURN(bool use_regex,
                     hf_json::Bool(spec, "use_regex", where, true));
    std::unique_ptr<Regex> regex;
    if (use_regex) {
      ASSIGN_OR_RETURN(regex, CompileAt(kGpt2Pattern, where));
    }
    return std::unique_ptr<PreTokenizer>(
        new ByteLevelPreTokenizer(prefix, std::move(regex)));
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(
        std::string replacement,
        hf_json::String(spec, "replacement", where, "\xE2\x96\x81"));
    if (!utf8::IsValid(replacement) || replacement.empty()) {
      return Status::InvalidArgument(where +
                                     ".replacement: must be one character");
    }
    ASSIGN_OR_RETURN(bool add_prefix,
                     hf_json::Bool(spec, "add_prefix_space", where, true));
    ASSIGN_OR_RETURN(std::string scheme,
                     hf_json::String(spec, "prepend_scheme", where,
                                     add_prefix ? "always" : "never"));
    ASSIGN_OR_RETURN(bool split, hf_json::Bool(spec, "split", where, true));
    MetaspacePreTokenizer::Prepend prepend;
    if (scheme == "always") {
      prepend = MetaspacePreTokenizer::Prepend::kAlways;
    } else if (scheme == "first") {
      prepend = MetaspacePreTokenizer::Prepend::kFirst;
    } else if (scheme == "never") {
      prepend = MetaspacePreTokenizer::Prepend::kNever;
    } else {
      return Status::InvalidArgument(where + ".prepend_scheme \"" + scheme +
                                     "\" is not one of always, first, never");
    }
    return std::unique_ptr<PreTokenizer>(
        new MetaspacePreTokenizer(replacement, prepend, split));
  }
  if (type == "Digits") {
    ASSIGN_OR_RETURN(bool individual,
                     hf_json::Bool(spec, "individual_digits", where, false));
    return RegexSplit(individual ? "\\p{Nd}" : "\\p{Nd}+", Behavior::kIsolated,
                      false, where);
  }
  if (type == "Whitespace") {
    // tokenizers' \w+|[^\w\s]+, keeping the matches.
    return RegexSplit("\\w+|[^\\w\\s]+", Behavior::kRemoved, true, where);
  }
  if (type == "WhitespaceSplit") {
    return RegexSplit("\\s+", Behavior::kRemoved, false, where);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(const nlohmann::json* list,
                     hf_json::Array(spec, "pretokenizers", where));
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(auto part, ParsePreTokenizer(
                                      (*list)[i], where + ".pretokenizers[" +
                                                      std::to_string(i) + "]"));
      parts.push_back(std::move(part));
    }
    return std::unique_ptr<PreTokenizer>(
        new SequencePreTokenizer(std::move(parts)));
  }
  return hf_json::Unsupported(where, type,
                              {"ByteLevel", "Split", "Metaspace", "Digits",
                               "Whitespace", "WhitespaceSplit", "Sequence"});
}

}  // namespace model
}  // namespace fedpeft
