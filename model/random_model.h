// Random-weight checkpoints from a real config.json: the architecture of a
// published model (Llama-3.2-1B, Qwen2.5-0.5B, Qwen3-0.6B, SmolLM2-135M:
// assets/configs/) with normal(0, 0.02) weights, full size for benchmarks
// or shrunk for tests. No weights are downloadable here; the shapes, rope
// scaling and norms are what matter to the code under test.
//
// `fedpeft init-model` is the command-line face of these functions.
//
// Thread-safety: free functions.
#ifndef FEDPEFT_MODEL_RANDOM_MODEL_H_
#define FEDPEFT_MODEL_RANDOM_MODEL_H_

#include <cstdint>
#include <string>

#include "common/status.h"
#include "model/llama.h"

namespace fedpeft {
namespace model {

// Sizes to replace in a config; 0 keeps the config's value.
struct ModelShape {
  int64_t layers = 0;         // num_hidden_layers
  int64_t hidden = 0;         // hidden_size
  int64_t heads = 0;          // num_attention_heads
  int64_t kv_heads = 0;       // num_key_value_heads
  int64_t head_dim = 0;       // head_dim (explicit; 0 keeps the config's)
  int64_t intermediate = 0;   // intermediate_size
  int64_t vocab = 0;          // vocab_size
  int64_t max_positions = 0;  // max_position_embeddings
};

// `config` with the sizes of `shape` replaced. An explicit head_dim is kept
// unless overridden; bos/eos ids the new vocabulary cannot hold become -1
// (none). Validates the result, naming the bad field.
StatusOr<LlamaConfig> ReshapeConfig(const LlamaConfig& config,
                                    const ModelShape& shape);

// Writes a Hugging Face folder (config.json, model.safetensors in `dtype`:
// float32, bfloat16 as published checkpoints are, or float16) with
// RandomLlamaWeights(config, seed): deterministic for a seed.
Status WriteRandomHfModel(const LlamaConfig& config, uint64_t seed,
                          const std::string& dir,
                          torch::Dtype dtype = torch::kFloat32);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_RANDOM_MODEL_H_
