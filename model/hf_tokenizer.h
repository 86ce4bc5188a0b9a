// Hugging Face tokenizer.json, read by our own code (no Rust, no Python):
// the Tokenizer of Llama-3, Qwen2.5/Qwen3, SmolLM2 (byte-level BPE) and of
// Llama-2 / Mistral exported to JSON (SentencePiece-style BPE with
// byte_fallback). Encoding follows tokenizers' pipeline:
//   1. added tokens that are not `normalized` are matched in the raw text
//      (leftmost, longest first; `lstrip`/`rstrip` swallow the whitespace
//      beside them, `single_word` requires non-word characters around);
//   2. the text between them is normalized (normalizer.h), then added
//      tokens that are `normalized` are matched in it;
//   3. the rest is pre-tokenized (pre_tokenizer.h) and each piece encoded
//      by the BPE model (bpe.h);
//   4. with add_special_tokens, the post-processor adds its tokens
//      (TemplateProcessing "single", RobertaProcessing, BertProcessing; a
//      ByteLevel post-processor adds none).
// Added and special tokens in the text are always recognized, with or
// without add_special_tokens, as in transformers (split_special_tokens off).
// Decoding maps ids to tokens (skipping special ones when asked) and runs
// the decoder (hf_decoder.h).
//
// Supported components: see normalizer.h, pre_tokenizer.h, bpe.h,
// hf_decoder.h; models other than BPE (WordPiece, Unigram, WordLevel) and
// unknown component types are refused on load with one message naming the
// file, the key path and the supported types, e.g.
//   tokenizer.json: pre_tokenizer.type "Whatever" is not supported
//   (supported: ByteLevel, Split, ...)
//
// Invalid UTF-8 input: tokenizers takes only valid strings (Rust's str);
// we replace every maximal invalid subsequence by U+FFFD first (as
// String::from_utf8_lossy and Python's errors="replace"), so the ids are
// those Hugging Face gives for the lossily decoded text. A codepoint the
// model cannot encode (no byte fallback, no unk token) is dropped where
// tokenizers would fail the whole call.
//
// BOS / EOS / pad: from tokenizer_config.json beside the file when present
// (bos_token, eos_token, pad_token as a string or {"content": ...}), else
// BOS from the post-processor's template (the special token before the
// text) and EOS / pad unknown (-1).
//
// Thread-safety: Encode/Decode are const and safe from many threads.
#ifndef FEDPEFT_MODEL_HF_TOKENIZER_H_
#define FEDPEFT_MODEL_HF_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "model/tokenizer.h"

namespace fedpeft {
namespace model {

class BpeModel;
class HfDecoder;
class Normalizer;
class PreTokenizer;

// One entry of tokenizer.json's "added_tokens".
struct AddedToken {
  int64_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

class HfTokenizer : public Tokenizer {
 public:
  ~HfTokenizer() override;

  // Parses tokenizer.json text; `name` prefixes every error ("<name>:
  // model.merges[3]: ..."). `config_json` is tokenizer_config.json's text
  // or empty. InvalidArgument / Unimplemented / Corruption on bad input.
  static StatusOr<std::unique_ptr<HfTokenizer>> Parse(
      const std::string& json, const std::string& name,
      const std::string& config_json = "");

  using Tokenizer::Encode;
  // The text's ids, BOS / EOS added by hand (not by the post-processor).
  std::vector<int64_t> Encode(const std::string& text, bool add_bos,
                              bool add_eos) const override;
  // The text's ids, plus the post-processor's tokens when
  // `add_special_tokens` (Hugging Face's encode()).
  std::vector<int64_t> Encode(const std::string& text,
                              bool add_special_tokens) const override;
  // Special tokens dropped (Hugging Face's skip_special_tokens=True).
  std::string Decode(const std::vector<int64_t>& ids) const override;
  // Hugging Face's decode(ids, skip_special_tokens); unknown ids are
  // skipped. Invalid UTF-8 from byte tokens becomes U+FFFD, as there.
  std::string Decode(const std::vector<int64_t>& ids,
                     bool skip_special_tokens) const;

  int64_t vocab_size() const override { return vocab_size_; }
  int64_t bos_id() const override { return bos_id_; }
  int64_t eos_id() const override { return eos_id_; }
  int64_t pad_id() const override { return pad_id_; }
  int64_t TokenToId(const std::string& token) const override;
  const std::vector<AddedToken>& added_tokens() const { return added_; }

 private:
  HfTokenizer();
  // Appends the ids of `text` (valid UTF-8) without post-processing.
  void EncodeText(const std::string& text, std::vector<int64_t>* ids) const;
  // Splits `text` at the added tokens of `tokens` (indices into added_);
  // calls on_text(segment, starts_input) and on_token(id) in order.
  template <typename OnText, typename OnToken>
  void SplitAdded(const std::string& text, const std::vector<size_t>& tokens,
                  bool starts_input, OnText on_text, OnToken on_token) const;
  void EncodeSegment(const std::string& text, bool starts_input,
                     std::vector<int64_t>* ids) const;

  std::unique_ptr<Normalizer> normalizer_;       // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer_;  // may be null
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<HfDecoder> decoder_;  // may be null: tokens concatenated
  std::vector<AddedToken> added_;
  std::vector<size_t> raw_added_;         // not `normalized`, longest first
  std::vector<size_t> normalized_added_;  // `normalized`, longest first
  std::unordered_map<int64_t, size_t> added_by_id_;
  std::unordered_map<std::string, int64_t> added_by_content_;
  std::vector<int64_t> prefix_ids_;  // post-processor, before the text
  std::vector<int64_t> suffix_ids_;  // post-processor, after the text
  int64_t vocab_size_ = 0;
  int64_t bos_id_ = -1;
  int64_t eos_id_ = -1;
  int64_t pad_id_ = -1;
};

// Reads `path` (tokenizer.json, at most kMaxTokenizerFileBytes) and the
// tokenizer_config.json beside it when present. Errors name the file.
StatusOr<std::unique_ptr<HfTokenizer>> LoadHfTokenizer(const std::string& path);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_HF_TOKENIZER_H_
