// Helpers shared by the LlamaConfig/LlamaWeights code (llama_config.cc) and
// LlamaModel (llama.cc). Not part of the model/ API.
#ifndef FEDPEFT_MODEL_LLAMA_INTERNAL_H_
#define FEDPEFT_MODEL_LLAMA_INTERNAL_H_

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/text.h"
#include "model/frozen_weight.h"

namespace fedpeft {
namespace model {
struct LlamaWeights;

namespace internal {

// Indices into ProjectionNames().
enum Projection : int {
  kQ = 0,
  kK = 1,
  kV = 2,
  kO = 3,
  kGate = 4,
  kUp = 5,
  kDown = 6,
  kNumProjections = 7
};

// Index of `projection` in ProjectionNames(), -1 if unknown.
int ProjectionIndex(const std::string& projection);

// "model.layers.N."
std::string LayerPrefix(int64_t layer);
// "model.layers.N.self_attn.q_proj.weight" for a Projection.
std::string ProjectionKey(int64_t layer, int projection);
// "model.layers.N.self_attn.q_proj.bias" (q/k/v only).
std::string BiasKey(int64_t layer, int projection);
// "model.layers.N.self_attn.q_norm.weight" (kQ) or "...k_norm.weight" (kK).
std::string QkNormKey(int64_t layer, int projection);

// The tensors of `parts` if they are adjacent row blocks of one contiguous
// buffer (see PackProjections): an alias of the whole block, else undefined.
torch::Tensor FusedAlias(const std::vector<torch::Tensor>& parts);

// Where a projection of a frozen base lives: rows [offset, offset + rows)
// of `weight`.
struct FrozenSlice {
  const FrozenWeight* weight = nullptr;
  int64_t offset = 0;
  int64_t rows = 0;
};
// `name` (a key of ExpectedTensorShapes) inside w.frozen, if it is there.
std::optional<FrozenSlice> FindFrozen(const LlamaWeights& w,
                                      const std::string& name);

// The steps of FreezeWeights, for loaders that freeze while they read:
// layer `layer`'s seven projections (plain tensors of any float dtype in
// w->tensors) become its QkvKey, GateUpKey, o_proj and down_proj blocks;
// the embeddings and untied output layer become dense blocks (bfloat16 for
// int8/nf4). `in_place`: the tensors are views of the mapped file, already
// in `kind`'s dense dtype; they stay there, each projection under its own
// name (no packed blocks, which would copy).
void FreezeLayer(LlamaWeights* w, int64_t layer, BaseDtype kind,
                 bool in_place = false);
void FreezeEmbeddings(LlamaWeights* w, BaseDtype kind);

}  // namespace internal
}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_LLAMA_INTERNAL_H_
