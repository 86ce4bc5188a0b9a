// A compiled PCRE2 pattern (UTF + UCP, JIT when available) for the
// tokenizer.json pre-tokenizers and normalizers: their patterns use Unicode
// classes (\p{L}, \p{N}) and look-ahead, which std::regex lacks.
//
// Ownership: a Regex owns its compiled code; movable, not copyable.
// Thread-safety: FindAll is const and safe from many threads (each call
// uses its own match data).
#ifndef FEDPEFT_MODEL_REGEX_H_
#define FEDPEFT_MODEL_REGEX_H_

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace model {

class Regex {
 public:
  // Compiles `pattern`. InvalidArgument naming the pattern, PCRE2's error
  // text and the offset into the pattern when it does not compile.
  static StatusOr<Regex> Compile(const std::string& pattern);

  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;
  ~Regex();

  // The [begin, end) byte ranges of the successive non-overlapping matches
  // in `text`, left to right; an empty match advances by one codepoint.
  // REQUIRES: `text` is valid UTF-8 (it is not checked again).
  std::vector<std::pair<size_t, size_t>> FindAll(const std::string& text) const;

 private:
  struct Impl;
  explicit Regex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_REGEX_H_
