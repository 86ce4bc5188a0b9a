// A Llama-family model as a GGUF file llama.cpp runs: the metadata of its
// architecture, its tensors under llama.cpp's names, and the tokenizer.
//
// Architectures (general.architecture) by config.model_type:
//   llama, mistral -> "llama": q_proj/k_proj rows are permuted per head from
//     our rotate-half (Hugging Face) order into the interleaved-pair order of
//     llama.cpp's normal RoPE, as llama.cpp's convert_hf_to_gguf.py does;
//   qwen2 -> "qwen2", qwen3 -> "qwen3": NEOX RoPE, which is rotate-half, so
//     the rows are written as they are.
// RoPE scaling other than none is Unimplemented (llama3/yarn would need
// llama.cpp's rope_freqs tensor and yarn keys, untested here).
//
// Tensor names (HF -> GGUF): embed_tokens -> token_embd, layers.N ->
// blk.N, self_attn.{q,k,v,o}_proj -> attn_{q,k,v,output},
// self_attn.{q,k}_norm -> attn_{q,k}_norm, input_layernorm -> attn_norm,
// post_attention_layernorm -> ffn_norm, mlp.{gate,up,down}_proj ->
// ffn_{gate,up,down}, norm -> output_norm, lm_head -> output (absent when
// tied: llama.cpp then reuses token_embd).
//
// Tensor types: 1-D tensors (norms, biases) are always F32; matrices are
// `type`, except that Q8_0 falls back to F16 for a matrix whose row length is
// not a multiple of 32 (what llama.cpp's converter does).
//
// Tokenizer: a SentencePiece tokenizer.model becomes tokenizer.ggml.model
// "llama" with its pieces, scores, types, unk/bos/eos ids and add_bos_token
// true (what Hugging Face's LlamaTokenizer and our Encode do). For qwen2 and
// qwen3 a byte-level BPE tokenizer.json becomes "gpt2" with pre-tokenizer
// "qwen2": tokens by id (ids below vocab_size it does not use become
// "[PAD<id>]", unused), types (added special tokens control, other added
// tokens user-defined), merges, the eos/pad ids and add_bos_token as our
// tokenizer resolves them. Other tokenizers (Llama-3's and SmolLM2's
// tokenizer.json: their pre-tokenizer names) are Unimplemented.
//
// Thread-safety: free functions.
#ifndef FEDPEFT_MODEL_GGUF_EXPORT_H_
#define FEDPEFT_MODEL_GGUF_EXPORT_H_

#include <torch/torch.h>

#include <string>

#include "common/status.h"
#include "model/gguf_writer.h"
#include "model/llama.h"

namespace fedpeft {
namespace model {

struct GgufModelOptions {
  // Type of the 2-D weights: F32, F16 (the default, as llama.cpp's
  // converter) or Q8_0. 1-D tensors are F32 whatever this says.
  GgufTensorType type = GgufTensorType::kF16;
  std::string name;  // general.name; empty = not written
  // A tokenizer.model, a tokenizer.json (qwen2/qwen3) or a GGUF file holding
  // a SentencePiece tokenizer; empty = no tokenizer keys.
  std::string tokenizer_path;
};

// "llama", "qwen2" or "qwen3" for `config`; Unimplemented naming the
// model_type or the rope scaling otherwise.
StatusOr<std::string> GgufArchitecture(const LlamaConfig& config);

// llama.cpp's name of a Hugging Face tensor name
// ("model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"), or ""
// for a name that has none.
std::string GgufTensorName(const std::string& hf_name);

// The rows of `w` (a q_proj/k_proj weight [heads * head_dim, in], a bias, or
// a LoRA B [heads * head_dim, r]) in the order llama.cpp's `arch` expects:
// permuted per head for "llama" when `projection` is "q_proj" or "k_proj",
// unchanged otherwise. Returns a fresh tensor or `w` itself (aliased).
torch::Tensor GgufRowOrder(const torch::Tensor& w, const std::string& arch,
                           const std::string& projection,
                           const LlamaConfig& config);

// Writes `weights` to `path` (atomically). Errors name the tensor or key.
Status WriteGgufModel(const LlamaWeights& weights, const std::string& path,
                      const GgufModelOptions& options);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_GGUF_EXPORT_H_
