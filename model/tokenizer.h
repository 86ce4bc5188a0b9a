// Tokenizers: Hugging Face tokenizer.json (byte-level BPE as in Llama-3,
// Qwen, SmolLM2; SentencePiece-style BPE as in Llama-2 and Mistral; see
// model/hf_tokenizer.h), SentencePiece BPE models (tokenizer.model) and
// llama2.c tokenizer files (tok512.bin: int32 max token length, then per token
// F32 score, int32 length, bytes), encoded with the same BPE-by-score merge and
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
  // Text -> ids; adds BOS/EOS when asked (nothing is added when the
  // tokenizer has no such token, i.e. its id is -1). SentencePiece's
  // dummy-prefix space convention applies (as in Llama).
  virtual std::vector<int64_t> Encode(const std::string& text, bool add_bos,
                                      bool add_eos) const = 0;
  // Text -> ids as the tokenizer's own post-processor lays them out when
  // `add_special_tokens`: a tokenizer.json's template (BOS for Llama-2/3,
  // nothing for Qwen3); BOS for tokenizer.model and llama2.c files (what
  // Hugging Face's LlamaTokenizer does). Without it, the bare text ids.
  virtual std::vector<int64_t> Encode(const std::string& text,
                                      bool add_special_tokens) const {
    return Encode(text, add_special_tokens, false);
  }
  // Ids -> text (special tokens dropped, byte tokens reassembled).
  virtual std::string Decode(const std::vector<int64_t>& ids) const = 0;
  // One past the largest token id (a model's embedding may be larger).
  virtual int64_t vocab_size() const = 0;
  // Ids of BOS / EOS / padding, -1 when the tokenizer has none (Qwen3 has
  // no BOS; tokenizer.model and llama2.c files have no padding token).
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual int64_t pad_id() const { return -1; }
  // The id of a token spelled exactly `token` (special tokens such as
  // "<|im_start|>" or "<s>" included), or -1 when there is none.
  virtual int64_t TokenToId(const std::string& token) const = 0;
};

// Loads `path`: "*.json" -> Hugging Face tokenizer.json (with
// tokenizer_config.json beside it when present, see LoadHfTokenizer);
// "*.model" -> SentencePiece; "*.bin" -> llama2.c tokenizer (its vocab size
// is taken from `vocab_size_hint`, required > 0 for .bin); "*.gguf" -> the
// tokenizer.ggml.* keys of a GGUF model (tokenizer model "llama", i.e.
// SentencePiece BPE, only).
StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path,
                                                   int64_t vocab_size_hint = 0);

// The vocabulary of a SentencePiece tokenizer.model as the file holds it:
// pieces with SentencePiece's U+2581 for spaces, scores, piece types
// (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte) and
// the special ids. What a GGUF file's tokenizer.ggml.* keys carry.
struct SentencePieceVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<int> types;
  int64_t unk_id = 0;
  int64_t bos_id = 1;
  int64_t eos_id = 2;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = false;
};

// Reads a tokenizer.model with the checks LoadTokenizer applies (BPE model,
// identity normalization, special ids in range), or for a path ending in
// .gguf the tokenizer.ggml.* keys of a GGUF model (tokenizer model "llama");
// Corruption naming `path` and what is wrong, Unimplemented for other model
// types, NotFound for a GGUF file without a tokenizer.
StatusOr<SentencePieceVocab> ReadSentencePieceVocab(const std::string& path);

// The tokenizer that belongs to a model path: for a Hugging Face folder (or
// a file in one) "<dir>/tokenizer.json", else "<dir>/tokenizer.model" --
// tokenizer.json first, because when a folder holds both (Llama-2,
// Mistral) it is the one transformers' fast tokenizer reads, added tokens
// and post-processor included; "tok<vocab>.bin" or "tokenizer.bin" beside a
// llama2.c .bin; a GGUF model file itself. NotFound with a hint to pass
// --tokenizer otherwise.
StatusOr<std::string> FindTokenizerForModel(const std::string& model_path,
                                            int64_t vocab_size);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_TOKENIZER_H_
