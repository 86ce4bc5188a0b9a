// Pre-tokenizers of Hugging Face tokenizer.json ("pre_tokenizer": {...}):
// they cut normalized text into pieces ("words") that the model encodes one
// by one. Supported types:
//   ByteLevel  GPT-2's: optional prefix space, optional GPT-2 regex split,
//              then every byte spelled as its printable codepoint (the
//              GPT-2 byte<->unicode map, see ByteToUnicode).
//   Split      a String or Regex pattern (PCRE2, UTF + UCP) with behavior
//              Removed, Isolated, MergedWithPrevious, MergedWithNext or
//              Contiguous, and `invert`.
//   Metaspace  ' ' -> replacement (U+2581), prepend_scheme always / first /
//              never, optional split before each replacement.
//   Digits, Whitespace, WhitespaceSplit, Sequence.
// Others (BertPreTokenizer, Punctuation, CharDelimiterSplit, UnicodeScripts)
// are refused by name when the file is loaded.
//
// Thread-safety: Split is const and safe from many threads.
#ifndef FEDPEFT_MODEL_PRE_TOKENIZER_H_
#define FEDPEFT_MODEL_PRE_TOKENIZER_H_

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace model {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces every piece of `pieces` by its sub-pieces, in order; empty
  // pieces are dropped. `first_section` says the pieces begin the input
  // (not text after an added token), for Metaspace's prepend_scheme
  // "first". REQUIRES: the pieces are valid UTF-8.
  virtual void Split(std::vector<std::string>* pieces,
                     bool first_section) const = 0;
};

// Builds the pre-tokenizer `spec` describes; `where` is its key path for
// messages. Unimplemented naming an unknown type and the supported ones;
// InvalidArgument for a bad field or a regex that does not compile (the
// pattern, PCRE2's message and the offset).
StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(
    const nlohmann::json& spec, const std::string& where);

// GPT-2's byte -> codepoint map as UTF-8 strings: printable Latin-1 bytes
// map to themselves, the other 68 to U+0100 + n in byte order.
const std::vector<std::string>& ByteToUnicode();

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_PRE_TOKENIZER_H_
