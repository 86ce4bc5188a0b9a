// Loading base models from the layouts people have on disk.
//
//  * Hugging Face folder: config.json + model.safetensors, or a sharded
//    model.safetensors.index.json; F32/F16/BF16 weights, converted to the
//    compute dtype. "model." prefixes as transformers writes them.
//  * llama2.c checkpoint (.bin): 7 int32 header fields (dim, hidden_dim,
//    n_layers, n_heads, n_kv_heads, vocab_size -- negative when the
//    classifier is not shared --, seq_len), then F32 tensors. Its q/k rows
//    use interleaved rotary pairs (Meta order); they are permuted per head
//    into the rotate-half order of Hugging Face, so both layouts give the
//    same logits.
//
// Every check happens before allocation: file size against the header,
// the layer count and shapes against the tensors present, with a hint
// ("maybe wrong base model?"). config.json and the shard index are JSON
// read whole up to kMaxConfigFileBytes; weights are memory-mapped
// (MappedFile), with no size cap, and every size in them is checked
// against the file's length.
//
// Thread-safety: free functions.
#ifndef FEDPEFT_MODEL_LOADER_H_
#define FEDPEFT_MODEL_LOADER_H_

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "model/llama.h"

namespace fedpeft {
namespace model {

struct LoadOptions {
  torch::Dtype dtype = torch::kFloat32;  // compute dtype of the weights
  std::string device = "cpu";            // "cpu", "cuda", "cuda:1"
  // How the frozen big matrices are held (model/frozen_weight.h): unset,
  // or the compute dtype: plain tensors, as before; bfloat16 /
  // float16 (half the memory; converted per matmul), int8 or nf4
  // (quantized at load, dequantized per layer in forward and backward).
  // Norms, biases and adapters stay in the compute dtype.
  std::optional<BaseDtype> base_dtype;
  // The part to hold (a pipeline stage): only its tensors are read from a
  // Hugging Face folder; llama2.c and GGUF files are read whole and cut.
  LayerSpan span;
  // A frozen base whose dense dtype is the file's (base_dtype bfloat16 on a
  // bfloat16 safetensors checkpoint, float16 on float16, float32 on a
  // float32 file with another compute dtype) stays in the file's pages, on
  // the CPU: the read-only mapping is the weights, shared through the page
  // cache by every process that maps the file, nothing is copied, and each
  // projection is its own block (no packed q/k/v, gate/up). The file must
  // not change while it is mapped. false: always copy.
  bool map_weights = true;
};

// Dispatches on the path: a directory -> Hugging Face folder; a file ending
// in .bin -> llama2.c; .gguf -> LoadGgufModel; otherwise an error naming the
// path and the layouts accepted.
StatusOr<std::shared_ptr<const LlamaWeights>> LoadModel(
    const std::string& path, const LoadOptions& options = {});

StatusOr<std::shared_ptr<const LlamaWeights>> LoadHfModel(
    const std::string& dir, const LoadOptions& options = {});

// The text of a Hugging Face config.json (LoadHfModel reads the file, at
// most kMaxConfigFileBytes, and parses it here); `source` names it in
// errors. InvalidArgument for text that is not JSON or a config out of
// range, Unimplemented for an architecture or feature not supported (see
// LlamaConfig::FromHfJson).
StatusOr<LlamaConfig> ParseHfConfig(std::string_view text,
                                    const std::string& source);

StatusOr<std::shared_ptr<const LlamaWeights>> LoadLlama2cModel(
    const std::string& path, const LoadOptions& options = {});

// A GGUF file (model/gguf_reader.h) of architecture llama, qwen2 or qwen3
// with F32, F16 or Q8_0 tensors (dequantized to the compute dtype), as
// `fedpeft export --format gguf --merge` and llama.cpp's converter write
// them: the config from the {arch}.* keys, tensors renamed to Hugging Face
// names, q/k rows of "llama" permuted back from llama.cpp's interleaved rope
// order to ours. Every key and tensor is checked before any is read;
// Corruption names the file, the key or tensor, what was found and what was
// expected; Unimplemented for other architectures, tensor types, rope
// scaling or partial rotary embeddings.
StatusOr<std::shared_ptr<const LlamaWeights>> LoadGgufModel(
    const std::string& path, const LoadOptions& options = {});

// Writes `weights` as a Hugging Face folder (config.json with its
// torch_dtype, model.safetensors in `dtype`: float32, bfloat16 or float16),
// as `fedpeft export --merge` does. A frozen base is written dequantized.
// Files are written atomically.
Status SaveHfModel(const LlamaWeights& weights, const std::string& dir,
                   torch::Dtype dtype = torch::kFloat32);

// Per-head row permutation between the two rotary layouts of a q/k weight
// [n_heads * head_dim, in]: interleaved pairs (Meta/llama2.c/GGUF) to
// halves (Hugging Face), and back.
torch::Tensor PermuteInterleavedToHalves(const torch::Tensor& w,
                                         int64_t n_heads);
torch::Tensor PermuteHalvesToInterleaved(const torch::Tensor& w,
                                         int64_t n_heads);

// Parses "cpu", "cuda", "cuda:N" into a device; names the bad value.
StatusOr<torch::Device> ParseDevice(const std::string& name);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_LOADER_H_
