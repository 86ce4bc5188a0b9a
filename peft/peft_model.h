// Parameter-efficient fine-tuning of a LlamaModel: LoRA on target
// projections, or bottleneck adapters after attention and/or MLP.
//
// LoRA (Hu et al. 2021), as Hugging Face PEFT defines it: for a frozen
// projection W [out, in], y = W x + (alpha / r) * B A dropout(x), with
// A [r, in] Kaiming-uniform (a = sqrt(5), PEFT's default) and B [out, r]
// zero, so a fresh adapter leaves the model unchanged. rank_pattern /
// alpha_pattern override r / alpha per module (keys match a module path
// suffix like "q_proj" or "layers.3.self_attn.q_proj", PEFT's rule).
//
// Bottleneck adapter (Houlsby et al. 2019): h + up(act(down(h))) applied to
// the output of attention and/or MLP before the residual add; up is zero
// initialised so a fresh adapter is the identity.
//
// Adapter tensors are named by PEFT's keys:
//   base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight [r, in]
//   base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight [out, r]
//   base_model.model.model.layers.3.attn_adapter.down.weight     [b, dim]
//   (down.bias, up.weight [dim, b], up.bias; mlp_adapter likewise)
//
// Ownership: a PeftModel owns its LlamaModel (which aliases the shared
// frozen base). AdapterTensors() aliases the live parameters; callers that
// keep them across training must clone.
//
// Thread-safety: one thread at a time.
#ifndef FEDPEFT_PEFT_PEFT_MODEL_H_
#define FEDPEFT_PEFT_PEFT_MODEL_H_

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"
#include "model/llama.h"

namespace fedpeft {
namespace peft {

struct LoraOptions {
  int r = 8;             // rank of every adapted projection
  double alpha = 16.0;   // scale = alpha / r (alpha / sqrt(r) with rslora)
  double dropout = 0.0;  // dropout on the LoRA input while training
  // Hugging Face projection names to adapt.
  std::vector<std::string> target_modules{"q_proj", "k_proj", "v_proj",
                                          "o_proj"};
  std::vector<int> layers_to_transform;         // empty = every layer
  std::map<std::string, int> rank_pattern;      // module suffix -> r
  std::map<std::string, double> alpha_pattern;  // module suffix -> alpha
  bool use_rslora = false;  // scale = alpha / sqrt(r) (Kalajdzievski 2023)
};

struct BottleneckOptions {
  int bottleneck_dim = 16;  // width of the down-projection
  std::vector<std::string> places{"attn", "mlp"};  // after which sublayers
  std::string activation = "relu";                 // relu | gelu | silu | tanh
  std::vector<int> layers_to_transform;            // empty = every layer
};

struct PeftOptions {
  std::string method = "lora";  // lora | bottleneck
  LoraOptions lora;
  BottleneckOptions bottleneck;

  // Binds "method", "lora.*", "bottleneck.*" of a section and checks ranges
  // and names (unknown target module -> error listing the valid ones).
  void Read(ConfigReader& in);
};

class LoraLinear;
class BottleneckAdapter;

class PeftModel {
 public:
  // Injects fresh adapters into a new LlamaModel over `base` (into the
  // layers its span holds: a pipeline stage carries its own part of an
  // adapter).
  // Deterministic for `seed`. Fails on an invalid option (names it).
  static StatusOr<std::unique_ptr<PeftModel>> Create(
      std::shared_ptr<const model::LlamaWeights> base,
      const PeftOptions& options, uint64_t seed);

  model::LlamaModel& model() { return *model_; }
  const PeftOptions& options() const { return options_; }

  // The trainable parameters (exactly the adapter tensors).
  std::vector<torch::Tensor> TrainableParameters();

  // PEFT key -> live parameter (aliases; clone to keep a snapshot).
  TensorMap AdapterTensors();

  // Copies `tensors` into the adapter parameters. Every key must exist with
  // the same shape; all keys must be present unless `allow_partial`.
  // Errors name the key, the shape got and expected.
  Status LoadAdapterTensors(const TensorMap& tensors,
                            bool allow_partial = false);

  // LoRA only: folds the adapters into private copies of the base weights
  // (forward then skips them) / restores. Bottleneck adapters cannot merge:
  // FailedPrecondition.
  Status Merge();
  Status Unmerge();

  // Train/eval mode (dropout).
  void Train(bool on);

  int64_t NumTrainableParameters();

 private:
  PeftModel() = default;
  PeftOptions options_;
  std::shared_ptr<model::LlamaModel> model_;
  // Module path ("model.layers.3.self_attn.q_proj") -> its adapter; the
  // same modules model_ holds in its slots.
  std::map<std::string, std::shared_ptr<LoraLinear>> lora_;
  // "model.layers.3.attn_adapter" -> adapter.
  std::map<std::string, std::shared_ptr<BottleneckAdapter>> bottleneck_;
};

// Range and name checks of `options` (the ones PeftOptions::Read applies),
// all errors in one InvalidArgument with their keys ("lora.r: must be >= 1,
// got 0"). With `n_layers` >= 0, layer indices must also be below it.
Status ValidatePeftOptions(const PeftOptions& options, int64_t n_layers = -1);

// Rank and alpha that `options` give the projection at `module_path`
// ("model.layers.3.self_attn.q_proj"), applying rank_pattern/alpha_pattern.
int RankFor(const LoraOptions& options, const std::string& module_path);
// `options` with every LoRA module at rank `rank` and the LoRA scaling
// unchanged (alpha/r, or alpha/sqrt(r) with rsLoRA): alpha is scaled with the
// rank, so adapters of different ranks are in the same units and the leading
// components of one are a rank-truncation of the other.
// REQUIRES: options.method == "lora", rank >= 1, no rank/alpha patterns.
PeftOptions WithUniformRank(const PeftOptions& options, int64_t rank);
// The LoRA scaling options give a module of rank r with alpha.
double LoraScaling(const LoraOptions& options, double alpha, int64_t r);
double AlphaFor(const LoraOptions& options, const std::string& module_path);

}  // namespace peft
}  // namespace fedpeft

#endif  // FEDPEFT_PEFT_PEFT_MODEL_H_
