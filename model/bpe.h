// The BPE model of Hugging Face tokenizer.json ("model": {"type": "BPE"}):
// a vocabulary (token -> id) and ranked merges. A word (one pre-token) starts
// as one symbol per codepoint and the adjacent pair with the lowest merge
// rank is merged until none is left, leftmost first among equal ranks, as
// tokenizers' BPE does. Covers both families in use:
//   byte-level (GPT-2, Llama-3, Qwen): every codepoint of a word is in the
//     vocabulary already (the pre-tokenizer spelled bytes as codepoints);
//     `ignore_merges` takes a whole word found in the vocabulary as is.
//   SentencePiece-style (Llama-2, Mistral): a codepoint outside the
//     vocabulary becomes its UTF-8 bytes as <0xXX> tokens (`byte_fallback`),
//     or `unk_token` (consecutive ones fused when `fuse_unk`).
// Merges come as "a b" strings or ["a", "b"] pairs; a merge naming a token
// outside the vocabulary, or whose result is not in it, is refused on load.
// Not supported (refused): dropout, continuing_subword_prefix and
// end_of_word_suffix other than empty.
//
// Speed: merges are looked up by the pair of ids in a hash map, and words
// are cached (up to kWordCacheEntries words of at most kMaxCachedWordBytes).
// SentencePiece-style files have no pre-tokenizer, so the whole text is one
// word; when no token of the vocabulary holds U+2581 after another
// character (SentencePiece's split_by_whitespace), no merge can cross the
// point before a U+2581 that follows another character, and the word is
// encoded in chunks cut there -- the same ids, cached, in O(chunk) memory.
//
// Thread-safety: Tokenize is const and safe from many threads (the cache
// has its own mutex).
#ifndef FEDPEFT_MODEL_BPE_H_
#define FEDPEFT_MODEL_BPE_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace model {

class BpeModel {
 public:
  // Words cached at most; beyond it the cache is cleared and refills.
  static constexpr size_t kWordCacheEntries = 1 << 16;
  // Longer words are encoded every time (a long word is rarely repeated).
  static constexpr size_t kMaxCachedWordBytes = 64;

  // Builds the model `spec` describes ("model" of tokenizer.json); `where`
  // is its key path for messages. InvalidArgument for a malformed vocab or
  // merge (named, with its index), Unimplemented for an unsupported option.
  static StatusOr<std::unique_ptr<BpeModel>> Parse(const nlohmann::json& spec,
                                                   const std::string& where);

  // Appends the ids of one pre-token `word` (REQUIRES: valid UTF-8).
  void Tokenize(const std::string& word, std::vector<int64_t>* ids) const;

  // The token's id, if the vocabulary has it.
  std::optional<int64_t> TokenToId(const std::string& token) const;
  // The token of `id`, or nullptr when no vocabulary entry has that id.
  const std::string* IdToToken(int64_t id) const;
  // One past the largest id in the vocabulary.
  int64_t id_limit() const { return static_cast<int64_t>(tokens_.size()); }

 private:
  BpeModel() = default;
  void TokenizeUncached(const std::string& word,
                        std::vector<int64_t>* ids) const;
  void TokenizeCached(const std::string& word, std::vector<int64_t>* ids) const;

  struct Merge {
    int32_t rank;
    int32_t id;  // of the merged token
  };
  static uint64_t PairKey(int64_t a, int64_t b) {
    return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b);
  }

  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> tokens_;  // by id; empty where no token
  std::vector<bool> has_token_;
  std::unordered_map<uint64_t, Merge> merges_;
  int64_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  bool split_at_space_mark_ = false;  // see "Speed" above
  int64_t byte_ids_[256];             // <0xXX> ids, -1 when absent

  mutable std::mutex cache_mu_;
  // Guarded by cache_mu_.
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache_;
};

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_BPE_H_
