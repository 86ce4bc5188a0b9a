// UTF-8 helpers for the tokenizer.json reader: validation with replacement,
// codepoint iteration and encoding. No allocation beyond what is returned.
//
// Thread-safety: pure functions, reentrant.
#ifndef FEDPEFT_MODEL_UTF8_H_
#define FEDPEFT_MODEL_UTF8_H_

#include <cstddef>
#include <string>

namespace fedpeft {
namespace model {
namespace utf8 {

// Length in bytes of the valid UTF-8 sequence at s[i], or 0 when the bytes
// there are not one (bad lead byte, truncated, overlong, surrogate, beyond
// U+10FFFF). REQUIRES: i < s.size().
size_t ValidSequenceLength(const std::string& s, size_t i);

// True when `s` is valid UTF-8 throughout.
bool IsValid(const std::string& s);

// `s` with every maximal invalid subsequence replaced by U+FFFD, as Rust's
// String::from_utf8_lossy and Python's errors="replace" do. Valid input is
// returned unchanged.
std::string Sanitize(const std::string& s);

// Appends the UTF-8 encoding of `cp` (REQUIRES: a Unicode scalar value).
void Append(char32_t cp, std::string* out);

// Decodes the valid sequence at s[i] of `len` bytes (from
// ValidSequenceLength).
char32_t Decode(const std::string& s, size_t i, size_t len);

// Unicode White_Space (Rust's char::is_whitespace).
bool IsWhitespace(char32_t c);

}  // namespace utf8
}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_UTF8_H_
