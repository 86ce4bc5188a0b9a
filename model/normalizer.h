// Normalizers of Hugging Face tokenizer.json ("normalizer": {...}): text ->
// text before pre-tokenization. Supported types: NFC, NFD, NFKC, NFKD
// (libutf8proc), Replace (String or Regex pattern), Prepend, Strip,
// Lowercase (per-codepoint, utf8proc's simple mapping), Sequence. Others
// (BertNormalizer, Precompiled, StripAccents, Nmt, ByteLevel) are refused
// by name when the file is loaded.
//
// We need no alignments (offsets), so a normalizer is a plain string map.
//
// Thread-safety: Normalize is const and safe from many threads.
#ifndef FEDPEFT_MODEL_NORMALIZER_H_
#define FEDPEFT_MODEL_NORMALIZER_H_

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "common/status.h"

namespace fedpeft {
namespace model {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // REQUIRES: `text` is valid UTF-8; it stays so.
  virtual void Normalize(std::string* text) const = 0;
};

// Builds the normalizer `spec` describes; `where` is its key path for
// messages ("normalizer.normalizers[1]"). Unimplemented naming the type and
// the supported ones for an unknown type; InvalidArgument for a bad field.
StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(
    const nlohmann::json& spec, const std::string& where);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_NORMALIZER_H_
