// The layers one pipeline stage holds (LlamaWeights::span), with every
// served model's part of its adapter, and the KV cache of every sequence
// in flight through the stage. The head's runtime also holds the
// embeddings and the output layer.
//
// One LlamaModel per served name over the one partial base: the base alone
// (serve.base_name) and each adapter of serve.adapters restricted to the
// layers held (a LoRA on layer 20 lives at the stage holding layer 20).
//
// Thread-safety: used by one thread (the stage's compute thread).
#ifndef FEDPEFT_SERVE_PIPELINE_RUNTIME_H_
#define FEDPEFT_SERVE_PIPELINE_RUNTIME_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/llama.h"
#include "model/loader.h"
#include "peft/peft_model.h"
#include "serve/serve_config.h"

namespace fedpeft {
namespace serve {

class StageRuntime {
 public:
  // `part`: the span loaded. Loads serve.adapters (each checked against
  // the part; errors name the adapter and its folder).
  static StatusOr<std::unique_ptr<StageRuntime>> Create(
      const ServeConfig& config,
      std::shared_ptr<const model::LlamaWeights> part);
  ~StageRuntime();

  const model::LlamaWeights& part() const { return *part_; }

  // Runs the layers held on hidden states [1, rows, dim] at `position` of
  // sequence `sequence` under served model `model`, appending to its KV
  // cache (made at position 0). InvalidArgument for an unknown model or a
  // position that is not where the cache ends.
  StatusOr<torch::Tensor> Run(uint64_t sequence, const std::string& model,
                              int64_t position, const torch::Tensor& hidden);
  // The head's ends (REQUIRES: part().span.io): token ids -> hidden
  // [1, T, dim]; hidden after the last layer [1, 1, dim] -> logits [vocab].
  torch::Tensor Embed(const std::vector<int64_t>& ids);
  torch::Tensor Logits(const torch::Tensor& hidden);

  void Release(uint64_t sequence);
  void Clear();  // every KV cache
  size_t sequences() const { return caches_.size(); }

 private:
  StageRuntime() = default;
  std::shared_ptr<const model::LlamaWeights> part_;
  torch::Device device_{torch::kCPU};
  std::map<std::string, std::unique_ptr<peft::PeftModel>> adapters_;
  std::map<std::string, std::unique_ptr<model::LlamaModel>> plain_;
  std::map<uint64_t, model::KvCache> caches_;
};

// The served model's adapter tensors that belong to the layers of `span`
// (keys "base_model.model.model.layers.N...."); tensors outside any layer
// are kept.
TensorMap AdapterTensorsInSpan(const TensorMap& tensors,
                               const model::LayerSpan& span, int64_t n_layers);

// What a stage and the head compare before they form a ring.
struct ModelIdentity {
  model::LlamaConfig config;
  // SHA-256 (hex) of config.json and of every *.safetensors file's name
  // and header (tensor names, dtypes, shapes, offsets): equal for copies of
  // one model; weights of equal shapes but other values are not told apart.
  std::string fingerprint;
};
// Reads a Hugging Face model folder's config.json and safetensors headers
// (not the weights). Other layouts are refused: a stage reads only its
// span, which needs the folder layout.
StatusOr<ModelIdentity> IdentifyModel(const std::string& path);

// Bytes one layer's weights take in memory under `options`
// (model.base_dtype), and those of the embeddings + output layer.
uint64_t LayerWeightBytes(const model::LlamaConfig& config,
                          const model::LoadOptions& options);
uint64_t IoWeightBytes(const model::LlamaConfig& config,
                       const model::LoadOptions& options);

// Matrix-vector throughput of this process in GB/s (the median of a few
// products over a 32 MiB float32 matrix): a decode step's speed is its
// weight bytes over this.
double MeasureBandwidthGbps();

// Hidden states [1, rows, dim] as an Activation's bytes (float32, little
// endian, rows major) and back. FromActivationBytes checks the byte count
// against rows * dim and names what it got.
std::string ToActivationBytes(const torch::Tensor& hidden);
StatusOr<torch::Tensor> FromActivationBytes(const std::string& bytes,
                                            int64_t rows, int64_t dim);

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_PIPELINE_RUNTIME_H_
