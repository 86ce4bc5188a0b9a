// Tokenizers: SentencePiece BPE models (tokenizer.model) and llama2.c
// tokenizer files (tok512.bin: int32 max token length, then per token F32
// score, int32 length, bytes), encoded with the same BPE-by-score merge and
// byte fallback llama2.c uses, so both give the same ids for the same
// vocabulary.
//
// tokenizer.model is read by our own protobuf reader, not libsentencepiece:
// Debian's libsentencepiece0 bundles protobuf 3.14 with exported symbols
// that clash with LibTorch's libprotobuf 3.21 in one process (crash at
// startup). Supported: model type bpe with identity normalization, i.e.
// Llama-family tokenizers; others give Unimplemented. The ids are pinned to
// libsentencepiece's own output by tests/model/tokenizer_test.cc.
//
// Thread-safety: Encode/Decode are const and safe from many threads.
#ifndef FEDPEFT_MODEL_TOKENIZER_H_
#define FEDPEFT_MODEL_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace model {

// Largest tokenizer file read (tokenizer.model, tok<N>.bin); larger ones
// are refused unread, naming the size and this limit. The biggest
// SentencePiece models in use (262,144 pieces) are ~4 MB, llama2.c's
// tok32000.bin ~0.5 MB.
inline constexpr uint64_t kMaxTokenizerFileBytes = 64ull << 20;

// Most pieces a tokenizer may hold. A piece costs ~100 bytes in memory
// (string, score, kind, lookup entry) for as little as 2 bytes of file, so a
// 64 MiB file of empty pieces would cost GBs; 2^21 is eight times the
// largest vocabularies in use.
inline constexpr int64_t kMaxTokenizerPieces = int64_t{1} << 21;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Text -> ids; adds BOS/EOS when asked. SentencePiece's dummy-prefix
  // space convention applies (as in Llama).
  virtual std::vector<int64_t> Encode(const std::string& text, bool add_bos,
                                      bool add_eos) const = 0;
  // Ids -> text (special tokens dropped, byte tokens reassembled).
  virtual std::string Decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  // The id of a token given by its exact text, e.g. a chat template's
  // "<|im_start|>" (an added/special token that Encode matches before BPE);
  // nullopt when the tokenizer has no such token or cannot look tokens up
  // (the default, and SentencePiece .model / llama2.c files today, which
  // data/chat_template.cc maps only through bos_id()/eos_id()).
  virtual std::optional<int64_t> TokenId(const std::string& text) const {
    (void)text;
    return std::nullopt;
  }
};

// Loads `path`: "*.model" -> SentencePiece; "*.bin" -> llama2.c tokenizer
// (its vocab size is taken from `vocab_size_hint`, required > 0 for .bin).
StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path,
                                                   int64_t vocab_size_hint = 0);

// The tokenizer that belongs to a model path: "<dir>/tokenizer.model" for a
// Hugging Face folder, "tok<vocab>.bin" or "tokenizer.bin" beside a llama2.c
// .bin. NotFound with a hint to pass --tokenizer otherwise.
StatusOr<std::string> FindTokenizerForModel(const std::string& model_path,
                                            int64_t vocab_size);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_TOKENIZER_H_
