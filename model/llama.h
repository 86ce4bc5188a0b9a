// A Llama-family decoder (Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3, SmolLM,
// TinyStories) in LibTorch: RMSNorm, rotary position embeddings (plain or
// scaled: model/rope.h), grouped-query attention, optional q/k biases
// (Qwen2) or per-head q/k RMSNorm (Qwen3), SwiGLU MLP, tied or untied output
// embedding, KV cache for generation.
//
// Layout: weights are always held in the Hugging Face layout (q/k rows in
// rotate-half order, names "model.layers.N.self_attn.q_proj.weight", [out, in]
// matrices). Loaders of other layouts (llama2.c: interleaved rotary pairs)
// permute into it, so adapters trained here carry PEFT's key names and shapes
// and load in Hugging Face PEFT unchanged.
//
// Ownership: LlamaWeights are immutable after loading and shared
// (shared_ptr<const LlamaWeights>) by any number of LlamaModel instances, so
// N in-process workers cost O(base + N * adapter) memory. A LlamaModel owns
// only its adapter slots (registered as submodules, so parameters() yields
// exactly the trainable adapter parameters) and, after Merge, private copies
// of the merged weights.
//
// Thread-safety: LlamaWeights may be read from any thread. A LlamaModel is
// used by one thread at a time.
#ifndef FEDPEFT_MODEL_LLAMA_H_
#define FEDPEFT_MODEL_LLAMA_H_

#include <torch/torch.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/frozen_weight.h"
#include "model/rope.h"

namespace fedpeft {

// Name -> tensor, ordered by name (deterministic iteration and files).
using TensorMap = std::map<std::string, torch::Tensor>;

namespace model {

// Longest context a model config may declare (max_position_embeddings, or
// llama2.c's seq_len). LlamaModel allocates rotary tables for the whole
// context from this field alone, before any input: [max_seq_len, head_dim]
// cos and sin, 1 GiB in float32 at 2^20 positions and head_dim 128. 2^20
// covers the longest-context Llama-family models supported (Qwen2.5-1M:
// 1,010,000).
inline constexpr int64_t kMaxModelSeqLen = int64_t{1} << 20;

// Hyperparameters of a Llama-family model.
struct LlamaConfig {
  int64_t dim = 0;         // hidden_size
  int64_t hidden_dim = 0;  // intermediate_size (SwiGLU)
  int64_t n_layers = 0;    // num_hidden_layers
  int64_t n_heads = 0;     // num_attention_heads
  int64_t n_kv_heads = 0;  // num_key_value_heads (GQA when < n_heads)
  int64_t vocab_size = 0;
  int64_t max_seq_len = 2048;  // max_position_embeddings
  double norm_eps = 1e-5;      // rms_norm_eps
  double rope_theta = 10000.0;
  bool tie_embeddings = false;  // lm_head shares embed_tokens
  bool qkv_bias = false;        // q/k/v_proj carry biases (Qwen2)
  int64_t bos_id = 1;
  int64_t eos_id = 2;
  // Hugging Face model_type: "llama", "mistral", "qwen2" or "qwen3". Only
  // names the family in exported config.json files; the fields below decide
  // the computation.
  std::string model_type = "llama";
  // config.json's head_dim when it is not dim / n_heads (Qwen3: 128 with
  // dim 1024 and 16 heads); 0 = dim / n_heads. q_proj has n_heads *
  // head_dim() rows, o_proj as many columns.
  int64_t explicit_head_dim = 0;
  bool qk_norm = false;      // per-head RMSNorm of q and k before RoPE (Qwen3)
  RopeScaling rope_scaling;  // none by default

  int64_t head_dim() const {
    return explicit_head_dim > 0 ? explicit_head_dim : dim / n_heads;
  }
  int64_t q_dim() const { return n_heads * head_dim(); }
  int64_t kv_dim() const { return n_kv_heads * head_dim(); }
  // The longest sequence a forward accepts: max_seq_len, or for "dynamic"
  // rope scaling floor(factor * max_seq_len) (at most kMaxModelSeqLen),
  // since dynamic NTK exists to run beyond the trained length.
  int64_t context_length() const;

  // Every field in range and consistent (dim % n_heads == 0 unless
  // explicit_head_dim, n_heads % n_kv_heads == 0, even head_dim,
  // max_seq_len <= kMaxModelSeqLen, rope_scaling fields); names the field
  // otherwise.
  Status Validate() const;

  // From a Hugging Face config.json (model_type llama/mistral/qwen2/qwen3);
  // `source` names the file in errors. Rejects unsupported architectures
  // (naming model_type and the supported list), rope_scaling types and
  // biases with a clear message.
  static StatusOr<LlamaConfig> FromHfJson(const nlohmann::json& j,
                                          const std::string& source);
  // A config.json that Hugging Face transformers loads as the
  // <model_type>ForCausalLM it was read from; FromHfJson(ToHfJson()) gives
  // this config back.
  nlohmann::json ToHfJson() const;

  // Number of parameters of the base model.
  int64_t NumParameters() const;
};

// The part of a model one process holds: layers [begin, end) and, with
// `io`, the embeddings, the final norm and the output layer. A pipeline
// stage (serve/pipeline_stage.h) holds one contiguous span; every other
// user holds the whole model (the default).
struct LayerSpan {
  int64_t begin = 0;
  int64_t end = -1;  // one past the last layer; -1: through the last
  bool io = true;

  // `end` resolved against n_layers.
  int64_t End(int64_t n_layers) const { return end < 0 ? n_layers : end; }
  bool Whole(int64_t n_layers) const {
    return io && begin == 0 && End(n_layers) == n_layers;
  }
  bool HoldsLayer(int64_t layer, int64_t n_layers) const {
    return layer >= begin && layer < End(n_layers);
  }
  // Whether a tensor of ExpectedTensorShapes belongs to the span: a layer's
  // by its index, the others by `io`.
  bool Holds(const std::string& name, int64_t n_layers) const;
  // "layers 0-7 + io", for messages.
  std::string Describe(int64_t n_layers) const;
  // begin <= end <= n_layers, and at least one layer or io; names the
  // field otherwise.
  Status Validate(int64_t n_layers) const;
};

// The frozen base weights, HF names and layout, requires_grad false, never
// modified after load.
//
// Two forms. With `frozen` empty (a base_dtype equal to the compute dtype:
// the default) every tensor is a plain tensor of the compute dtype in
// `tensors`. Otherwise (`model.base_dtype` bfloat16/float16 under float32
// compute, or int8/nf4) the big matrices live in `frozen` in that form --
// per layer the packed q/k/v block (QkvKey), the packed gate/up block
// (GateUpKey), o_proj and down_proj under their own names, plus
// "model.embed_tokens.weight" and "lm_head.weight" (dense: bfloat16 for
// int8/nf4, as QLoRA keeps them) -- and `tensors` holds only the norms and
// biases, in the compute dtype.
struct LlamaWeights {
  LlamaConfig config;
  TensorMap tensors;  // "model.embed_tokens.weight", ..., "lm_head.weight"
                      // (absent when tied)
  std::map<std::string, FrozenWeight> frozen;  // see above
  BaseDtype base_dtype = BaseDtype::kFloat32;  // of the matrices in `frozen`
  torch::Dtype compute_dtype = torch::kFloat32;
  // The dtype of the projections in the file they came from (float32 for
  // llama2.c and random weights): what `export --merge` writes.
  torch::Dtype stored_dtype = torch::kFloat32;
  std::string source;  // path it was loaded from, for messages and export
  // The part held (LoadOptions::span); tensors outside it are absent.
  LayerSpan span;
  // Of nbytes(), the bytes that are pages of the model file, mapped
  // read-only and shared with other processes that map it
  // (LoadOptions::map_weights).
  int64_t mapped_bytes = 0;

  // Checks presence and shape of every tensor the config implies (in
  // `tensors`, or as part of a `frozen` block); names the tensor, the shape
  // got and the shape expected.
  Status Validate() const;
  // A plain tensor. REQUIRES: present in `tensors`.
  const torch::Tensor& Get(const std::string& name) const;
  // Any tensor the config implies, in the compute dtype: the plain tensor,
  // or its rows of a `frozen` block dequantized (a fresh copy).
  torch::Tensor Materialize(const std::string& name) const;
  // Shape of any tensor the config implies. REQUIRES: a valid name.
  std::vector<int64_t> Shape(const std::string& name) const;
  torch::Device device() const;
  // Bytes held by the tensors and frozen blocks.
  int64_t nbytes() const;
};

// Names of a layer's packed frozen blocks in LlamaWeights::frozen.
std::string QkvKey(int64_t layer);     // "model.layers.N.self_attn.qkv_proj"
std::string GateUpKey(int64_t layer);  // "model.layers.N.mlp.gate_up_proj"

// Moves the big matrices of plain `weights` (packed or not) into `frozen` in
// form `base_dtype`, one layer at a time (peak memory: the plain weights
// plus one layer). A base_dtype whose dense dtype is the compute dtype
// leaves the weights as they are.
void FreezeWeights(LlamaWeights* weights, BaseDtype base_dtype);
// True when a base of `base_dtype` under `compute_dtype` is plain tensors.
bool BaseIsPlain(BaseDtype base_dtype, torch::Dtype compute_dtype);

// Name -> shape of every tensor a model with `config` has, HF names
// ("lm_head.weight" only when untied, q/k/v biases only with qkv_bias,
// self_attn.q_norm/k_norm [head_dim] only with qk_norm).
std::map<std::string, std::vector<int64_t>> ExpectedTensorShapes(
    const LlamaConfig& config);
// Those of them `span` holds.
std::map<std::string, std::vector<int64_t>> ExpectedTensorShapes(
    const LlamaConfig& config, const LayerSpan& span);

// Drops every tensor and frozen block of `weights` outside `span` and sets
// weights->span (for loaders that cannot read a part alone).
void RestrictToSpan(LlamaWeights* weights, const LayerSpan& span);

// Re-stores each layer's q/k/v_proj weights as adjacent row blocks of one
// buffer (and gate/up_proj likewise), replacing the map entries by views of
// it. Values are unchanged; LlamaModel then runs one matmul per group
// instead of three (two) without copying the frozen base. Loaders and
// RandomLlamaWeights call it; weights built by hand work without it, only
// slower. REQUIRES: weights->Validate() ok.
void PackProjections(LlamaWeights* weights);

// The names of the seven projections that adapters may target, in the
// Hugging Face spelling; PEFT's target_modules for llama, mistral, qwen2 and
// qwen3 alike. Norms (including Qwen3's q_norm/k_norm) are never targets:
// they stay frozen base weights.
const std::vector<std::string>& ProjectionNames();  // q_proj ... down_proj
// "self_attn" for q/k/v/o_proj, "mlp" for gate/up/down_proj.
std::string ProjectionParent(const std::string& projection);

// Something that adds to a frozen projection's output: LoRA lives in peft/
// and implements this. Forward returns the delta for input x, i.e.
// y = base(x) + delta->Forward(x).
class LinearDelta : public torch::nn::Module {
 public:
  virtual torch::Tensor Forward(const torch::Tensor& x) = 0;
  // The dense [out, in] matrix this delta adds (for merge); dtype of `like`.
  virtual torch::Tensor DeltaWeight() = 0;
};

// Something applied to a sublayer's output before the residual add:
// bottleneck adapters live in peft/ and implement this. Returns the new
// output (e.g. h + up(act(down(h)))).
class SublayerAdapter : public torch::nn::Module {
 public:
  virtual torch::Tensor Forward(const torch::Tensor& h) = 0;
};

// Per-layer key/value cache for incremental decoding.
struct KvCache {
  std::vector<torch::Tensor> k;  // [B, n_kv_heads, T_cached, head_dim]
  std::vector<torch::Tensor> v;
  int64_t length = 0;  // tokens cached
};

class LlamaModel : public torch::nn::Module {
 public:
  // REQUIRES: weights validated. Aliases (does not copy) the weights.
  explicit LlamaModel(std::shared_ptr<const LlamaWeights> weights);
  ~LlamaModel() override;  // out of line: Layer is incomplete here

  const LlamaConfig& config() const { return weights_->config; }
  const std::shared_ptr<const LlamaWeights>& weights() const {
    return weights_;
  }

  // tokens: [B, T] int64. Returns logits [B, T, vocab] (float32).
  // With `cache`, attends over cache->length earlier tokens plus these and
  // appends their keys/values; positions start at cache->length.
  // Throws c10::Error when cache->length + T exceeds context_length().
  torch::Tensor Forward(const torch::Tensor& tokens, KvCache* cache = nullptr);

  // Final hidden states [B, T, dim] (after the last RMSNorm), for callers
  // that compute the loss in chunks to bound memory.
  torch::Tensor Hidden(const torch::Tensor& tokens, KvCache* cache = nullptr);

  // Output projection of hidden states to logits.
  torch::Tensor Logits(const torch::Tensor& hidden);

  // The pieces of Forward for a model over part of the layers (a pipeline
  // stage, LlamaWeights::span); a whole model may use them too, and
  // Head(RunLayers(Embed(tokens), cache)) == Forward(tokens, cache).
  // Embed: token ids [B, T] -> hidden [B, T, dim]. REQUIRES: span.io.
  torch::Tensor Embed(const torch::Tensor& tokens);
  // Runs the layers held on hidden states [B, T, dim] at positions
  // cache->length.., appending their keys/values; cache->length += T.
  // Throws c10::Error past context_length().
  torch::Tensor RunLayers(const torch::Tensor& x, KvCache* cache);
  // Final norm and output layer: hidden [B, T, dim] after the last layer
  // -> logits [B, T, vocab] (float32). REQUIRES: span.io.
  torch::Tensor Head(const torch::Tensor& x);
  const LayerSpan& span() const { return weights_->span; }

  // The output projection [vocab, dim] Logits multiplies by (the embedding
  // when tied); frozen, never merged. Aliases. For losses that fuse it with
  // the softmax (model/chunked_loss.h). On a frozen base (base_dtype) it is
  // the stored 16-bit matrix, not of the compute dtype.
  const torch::Tensor& lm_head() const {
    return lm_head_frozen_ != nullptr ? lm_head_frozen_->data() : lm_head_;
  }

  // Adapter slots. `projection` is one of ProjectionNames(); `place` is
  // "attn" or "mlp". Registers `delta` as a submodule named
  // "layers_<layer>_<projection>" (resp. "layers_<layer>_<place>_adapter").
  // Replacing an existing slot is allowed; nullptr clears it. Setting a
  // LinearDelta while merged re-merges with the new delta.
  void SetLinearDelta(int64_t layer, const std::string& projection,
                      std::shared_ptr<LinearDelta> delta);
  std::shared_ptr<LinearDelta> GetLinearDelta(int64_t layer,
                                              const std::string& projection);
  void SetSublayerAdapter(int64_t layer, const std::string& place,
                          std::shared_ptr<SublayerAdapter> adapter);
  std::shared_ptr<SublayerAdapter> GetSublayerAdapter(int64_t layer,
                                                      const std::string& place);

  // Layers below `first_trainable_layer` run under NoGradGuard (no
  // activations kept, no backward through them): layer freezing for weak
  // workers. Default 0.
  void set_first_trainable_layer(int64_t layer) { first_trainable_ = layer; }

  // Gradient checkpointing (model/checkpoint.h): each trainable layer keeps
  // only its input for backward and runs its forward again there, so
  // training holds one [B, T, dim] tensor per layer instead of all of the
  // layer's activations, for about one more forward pass of compute. LoRA
  // dropout draws the same masks in the recompute. Applies only where a
  // graph is recorded: not with a KV cache, under NoGradGuard, or in the
  // layers below first_trainable_layer. Gradients equal those without it.
  // Default off.
  void set_gradient_checkpointing(bool on) { checkpointing_ = on; }
  bool gradient_checkpointing() const { return checkpointing_; }

  // The base weight currently used for a projection (merged or not).
  torch::Tensor ProjectionWeight(int64_t layer, const std::string& projection);

  // Folds every LinearDelta into private copies of the affected base
  // weights and stops applying the deltas; the shared LlamaWeights stay
  // untouched. Unmerge restores the shared weights. Idempotent: a second
  // Merge does not refresh from deltas trained since (Unmerge first).
  void Merge();
  void Unmerge();
  bool merged() const { return merged_; }

  // The weights this model computes with, merged deltas folded in; HF names.
  // Clones every tensor.
  std::shared_ptr<LlamaWeights> ExportWeights();

 private:
  struct Layer;
  struct RopeTables;
  // Rope tables of positions [0, length) depend only on (length, the
  // frequencies, dtype, device); models with equal ones share one copy.
  static std::shared_ptr<const RopeTables> SharedRope(
      int64_t length, const RopeFrequencies& freqs,
      torch::TensorOptions options);
  // Tables for positions start..start+T-1: views of rope_ (grown first
  // when the forward reaches past it), or fresh ones when dynamic scaling
  // applies to this forward.
  static constexpr int64_t kInitialRopeLength = 4096;
  RopeTables RopeFor(int64_t start, int64_t length);
  torch::Tensor RunLayer(Layer& layer, const torch::Tensor& x, int64_t index,
                         int64_t start, const RopeTables& rope, KvCache* cache);
  // RunLayer without a cache, checkpointed (model/checkpoint.h).
  torch::Tensor RunLayerCheckpointed(int64_t index, const torch::Tensor& x,
                                     int64_t start, const RopeTables& rope);
  torch::Tensor Attention(Layer& layer, const torch::Tensor& x, int64_t index,
                          int64_t start, const RopeTables& rope,
                          KvCache* cache);
  torch::Tensor Mlp(Layer& layer, const torch::Tensor& x);
  // Projection p of x: `base_out` (x W^T, computed here when undefined)
  // plus the slot's delta unless merged.
  torch::Tensor Project(Layer& layer, int p, const torch::Tensor& x,
                        torch::Tensor base_out = {});
  // Additive causal masks for queries at positions start..start+T-1, one
  // per query block of Attention: [groups * block, keys up to the block's
  // end]. Cached: training calls it with the same shape every step.
  const std::vector<torch::Tensor>& CausalMasks(int64_t start, int64_t length);
  void MergeLayer(Layer& layer);
  void UnmergeLayer(Layer& layer);
  Layer& LayerAt(int64_t layer);

  std::shared_ptr<const LlamaWeights> weights_;
  std::vector<std::unique_ptr<Layer>> layers_;  // span().begin.. end
  int64_t first_layer_ = 0;                     // span().begin
  torch::TensorOptions options_;                // compute dtype and device
  torch::Tensor embed_;    // [vocab, dim]; undefined for a frozen base
  torch::Tensor lm_head_;  // [vocab, dim] (== embed_ when tied)
  // A frozen base's (LlamaWeights::frozen); null otherwise.
  const FrozenWeight* embed_frozen_ = nullptr;
  const FrozenWeight* lm_head_frozen_ = nullptr;
  torch::Tensor final_norm_;
  // Positions [0, n) for the longest forward so far (n a power of two
  // times kInitialRopeLength, at most max_seq_len); shared by equal configs.
  std::shared_ptr<const RopeTables> rope_;
  std::vector<torch::Tensor> masks_;  // last CausalMasks
  int64_t mask_start_ = -1;
  int64_t mask_length_ = -1;
  int64_t first_trainable_ = 0;
  bool checkpointing_ = false;
  bool merged_ = false;
};

// Builds a model with random weights (normal(0, 0.02), norms 1) for the
// benchmark presets and tests. Deterministic for a seed.
std::shared_ptr<LlamaWeights> RandomLlamaWeights(const LlamaConfig& config,
                                                 uint64_t seed);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_LLAMA_H_
