#include "model/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace fedpeft {
namespace model {

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Impl() { pcre2_code_free(code); }
};

Regex::Regex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;
Regex::~Regex() = default;

StatusOr<Regex> Regex::Compile(const std::string& pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()),
                                   pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                   &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR text[256];
    pcre2_get_error_message(error, text, sizeof(text));
    return Status::InvalidArgument(
        "regex \"" + pattern +
        "\" does not compile: " + reinterpret_cast<const char*>(text) +
        " at offset " + std::to_string(offset));
  }
  auto impl = std::make_unique<Impl>();
  impl->code = code;
  // JIT is several times faster; without it (some architectures) the
  // interpreter gives the same matches.
  impl->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return Regex(std::move(impl));
}

std::vector<std::pair<size_t, size_t>> Regex::FindAll(
    const std::string& text) const {
  std::vector<std::pair<size_t, size_t>> out;
  pcre2_match_data* md =
      pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t start = 0;
  while (start <= text.size()) {
    int rc = PCRE2_ERROR_NOMATCH;
    if (impl_->jit) {
      rc = pcre2_jit_match(impl_->code, subject, text.size(), start, 0, md,
                           nullptr);
    }
    // Without JIT, or when the JIT's 32 KiB stack ran out (a very long
    // match), the interpreter, whose backtracking lives on the heap.
    if (!impl_->jit || (rc < 0 && rc != PCRE2_ERROR_NOMATCH)) {
      rc = pcre2_match(impl_->code, subject, text.size(), start,
                       PCRE2_NO_UTF_CHECK, md, nullptr);
    }
    // No match, or PCRE2's match/heap limit hit (a pathological pattern):
    // the rest of the text stays one unmatched span.
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0];
    const size_t e = ov[1];
    if (e > b) {
      out.emplace_back(b, e);
      start = e;
    } else {
      // Empty match: step over one codepoint.
      start = b + 1;
      while (start < text.size() &&
             (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) {
        ++start;
      }
    }
  }
  pcre2_match_data_free(md);
  return out;
}

}  // namespace model
}  // namespace fedpeft
