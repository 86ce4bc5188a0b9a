// Decoders of Hugging Face tokenizer.json ("decoder": {...}): token strings
// -> text. As in tokenizers, each decoder maps the list of token strings to
// a new list, and the result is their concatenation. Supported types:
//   ByteLevel     codepoints of the GPT-2 byte map back to bytes
//   ByteFallback  runs of <0xXX> tokens back to bytes (U+FFFD per byte when
//                 a run is not valid UTF-8, as tokenizers does)
//   Fuse          all tokens into one
//   Strip         up to `start` / `stop` copies of `content` off each token
//   Replace       a String pattern in each token
//   Metaspace     U+2581 -> ' ', the first token's leading space dropped
//                 unless prepend_scheme is "never"
//   Sequence
// Others (WordPiece, BPEDecoder, CTC) are refused by name on load.
//
// Thread-safety: Decode is const and safe from many threads.
#ifndef FEDPEFT_MODEL_HF_DECODER_H_
#define FEDPEFT_MODEL_HF_DECODER_H_

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace model {

class HfDecoder {
 public:
  virtual ~HfDecoder() = default;
  // Rewrites `tokens` in place (see the list above).
  virtual void Decode(std::vector<std::string>* tokens) const = 0;
};

// Builds the decoder `spec` describes; `where` is its key path for
// messages. Unimplemented naming an unknown type and the supported ones.
StatusOr<std::unique_ptr<HfDecoder>> ParseHfDecoder(const nlohmann::json& spec,
                                                    const std::string& where);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_HF_DECODER_H_
