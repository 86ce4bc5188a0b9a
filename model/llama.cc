#include "model/llama.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>

#include "model/checkpoint.h"
#include "model/llama_internal.h"

namespace fedpeft {
namespace model {

using namespace internal;  // NOLINT(build/namespaces)

namespace {

// Query rows per block of causal attention (see Attention).
constexpr int64_t kAttentionBlock = 64;

// x * rsqrt(mean(x^2) + eps) * w, in float32 for low-precision inputs.
torch::Tensor RmsNorm(const torch::Tensor& x, const torch::Tensor& w,
                      double eps) {
  if (x.scalar_type() == torch::kFloat32 ||
      x.scalar_type() == torch::kFloat64) {
    torch::Tensor r = torch::rsqrt(x.square().mean(-1, true) + eps);
    return (x * r) * w;
  }
  torch::Tensor xf = x.to(torch::kFloat32);
  torch::Tensor r = torch::rsqrt(xf.square().mean(-1, true) + eps);
  return (xf * r).to(x.scalar_type()) * w;
}

}  // namespace

// ---------------------------------------------------------------------------
// LlamaModel

struct LlamaModel::Layer {
  torch::Tensor attn_norm;
  torch::Tensor ffn_norm;
  std::array<torch::Tensor, kNumProjections> base;    // shared aliases
  std::array<torch::Tensor, kNumProjections> merged;  // private, when merged
  torch::Tensor qkv_base;    // alias of packed q/k/v rows, or undefined
  torch::Tensor gu_base;     // alias of packed gate/up rows, or undefined
  torch::Tensor qkv_merged;  // private, while merged
  torch::Tensor gu_merged;
  torch::Tensor qkv_bias;  // [q_dim + 2 kv_dim] (Qwen2), or undefined
  torch::Tensor q_norm;    // [head_dim] (Qwen3), or undefined
  torch::Tensor k_norm;
  std::array<std::shared_ptr<LinearDelta>, kNumProjections> delta;
  std::shared_ptr<SublayerAdapter> attn_adapter;
  std::shared_ptr<SublayerAdapter> mlp_adapter;
  // A frozen base (LlamaWeights::frozen): where each projection's rows
  // live, and the packed blocks; `base`, qkv_base and gu_base then stay
  // undefined.
  std::array<FrozenSlice, kNumProjections> slice;
  const FrozenWeight* qkv_frozen = nullptr;
  const FrozenWeight* gu_frozen = nullptr;
  torch::Dtype dtype = torch::kFloat32;  // the compute dtype

  // The weight a projection computes with (a dequantized copy for a frozen
  // base).
  torch::Tensor W(int p) const {
    if (merged[p].defined()) return merged[p];
    if (base[p].defined()) return base[p];
    return slice[p].weight->Rows(slice[p].offset, slice[p].rows, dtype);
  }
  // A whole frozen block for projection p (o_proj, down_proj), unmerged.
  const FrozenWeight* WholeFrozen(int p) const {
    const FrozenSlice& s = slice[p];
    return !merged[p].defined() && s.weight != nullptr && s.offset == 0 &&
                   s.rows == s.weight->rows()
               ? s.weight
               : nullptr;
  }
  const torch::Tensor& Qkv() const {
    return qkv_merged.defined() ? qkv_merged : qkv_base;
  }
  const torch::Tensor& GateUp() const {
    return gu_merged.defined() ? gu_merged : gu_base;
  }
};

// cos and sign-folded sin of rotate-half RoPE, [positions, 1, head_dim]:
// x * cos + cat(x2, x1) * sin_signed == x * cos + rotate_half(x) * sin.
// Both carry the scaling's attention factor (YaRN), as transformers
// multiplies cos and sin by it.
struct LlamaModel::RopeTables {
  torch::Tensor cos;
  torch::Tensor sin_signed;
};

namespace {

// Tables of `positions` (float32) for `freqs`: cos and sin_signed of
// LlamaModel::RopeTables. As transformers
// computes them: float32 inverse frequencies and angles, then the compute
// dtype.
void BuildRope(const torch::Tensor& positions, const RopeFrequencies& freqs,
               torch::TensorOptions options, torch::Tensor* cos_out,
               torch::Tensor* sin_signed_out) {
  torch::NoGradGuard no_grad;
  torch::Tensor inv_freq =
      torch::tensor(freqs.inv_freq, torch::kFloat64).to(torch::kFloat32);
  torch::Tensor angles = torch::outer(positions, inv_freq);  // [S, hd/2]
  torch::Tensor cos = angles.cos();
  torch::Tensor sin = angles.sin();
  if (freqs.attention_factor != 1.0) {
    cos = cos * freqs.attention_factor;
    sin = sin * freqs.attention_factor;
  }
  const auto device = options.device();
  const auto dtype = options.dtype().toScalarType();
  *cos_out = torch::cat({cos, cos}, -1).unsqueeze(1).to(device, dtype);
  *sin_signed_out = torch::cat({-sin, sin}, -1).unsqueeze(1).to(device, dtype);
}

}  // namespace

LlamaModel::LlamaModel(std::shared_ptr<const LlamaWeights> weights)
    : torch::nn::Module("LlamaModel"), weights_(std::move(weights)) {
  TORCH_CHECK(weights_ != nullptr, "LlamaModel: weights are null");
  const LlamaConfig& c = weights_->config;
  const LayerSpan& span = weights_->span;
  first_layer_ = span.begin;
  const int64_t end = span.End(c.n_layers);
  TORCH_CHECK(span.Validate(c.n_layers).ok(),
              "LlamaModel: ", span.Validate(c.n_layers).message());
  const bool frozen = !weights_->frozen.empty();
  if (span.io) {
    final_norm_ = weights_->Get("model.norm.weight");
    options_ = final_norm_.options();
    const std::string lm_head_key =
        c.tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    if (frozen) {
      embed_frozen_ = &weights_->frozen.at("model.embed_tokens.weight");
      lm_head_frozen_ = &weights_->frozen.at(lm_head_key);
    } else {
      embed_ = weights_->Get("model.embed_tokens.weight");
      lm_head_ = weights_->Get(lm_head_key);
    }
  } else {
    options_ = weights_->Get(LayerPrefix(span.begin) + "input_layernorm.weight")
                   .options();
  }
  for (int64_t l = span.begin; l < end; ++l) {
    auto layer = std::make_unique<Layer>();
    layer->dtype = options_.dtype().toScalarType();
    layer->attn_norm = weights_->Get(LayerPrefix(l) + "input_layernorm.weight");
    layer->ffn_norm =
        weights_->Get(LayerPrefix(l) + "post_attention_layernorm.weight");
    if (frozen) {
      for (int p = 0; p < kNumProjections; ++p) {
        std::optional<FrozenSlice> s =
            FindFrozen(*weights_, ProjectionKey(l, p));
        TORCH_CHECK(s.has_value(), "frozen weights lack ", ProjectionKey(l, p));
        layer->slice[p] = *s;
      }
      // Packed blocks, unless the weights stay in the mapped file
      // (one block per projection).
      auto packed = [this](const std::string& key) -> const FrozenWeight* {
        auto it = weights_->frozen.find(key);
        return it == weights_->frozen.end() ? nullptr : &it->second;
      };
      layer->qkv_frozen = packed(QkvKey(l));
      layer->gu_frozen = packed(GateUpKey(l));
    } else {
      for (int p = 0; p < kNumProjections; ++p) {
        layer->base[p] = weights_->Get(ProjectionKey(l, p));
      }
      layer->qkv_base =
          FusedAlias({layer->base[kQ], layer->base[kK], layer->base[kV]});
      layer->gu_base = FusedAlias({layer->base[kGate], layer->base[kUp]});
    }
    if (c.qkv_bias) {
      layer->qkv_bias = torch::cat({weights_->Get(BiasKey(l, kQ)),
                                    weights_->Get(BiasKey(l, kK)),
                                    weights_->Get(BiasKey(l, kV))});
    }
    if (c.qk_norm) {
      layer->q_norm = weights_->Get(QkNormKey(l, kQ));
      layer->k_norm = weights_->Get(QkNormKey(l, kK));
    }
    layers_.push_back(std::move(layer));
  }
  // rope_ is made by the first forward (RopeFor).
}

LlamaModel::RopeTables LlamaModel::RopeFor(int64_t start, int64_t length) {
  const LlamaConfig& c = config();
  if (start + length <= c.max_seq_len) {
    // Dynamic scaling leaves positions up to max_seq_len unscaled. The
    // tables grow with the longest forward, doubling from
    // kInitialRopeLength: a table of length n is the first n rows of a
    // longer one, and Llama-3.2's 131,072 positions would be 64 MiB in
    // float32 for a model trained at 512.
    if (!rope_ || rope_->cos.size(0) < start + length) {
      int64_t n = kInitialRopeLength;
      while (n < start + length) n *= 2;
      rope_ = SharedRope(
          std::min(n, c.max_seq_len),
          ComputeRopeFrequencies(c.rope_scaling, c.head_dim(), c.rope_theta,
                                 c.max_seq_len, c.max_seq_len),
          options_);
    }
    return RopeTables{rope_->cos.narrow(0, start, length),
                      rope_->sin_signed.narrow(0, start, length)};
  }
  // Only dynamic scaling allows longer forwards (context_length): its
  // frequencies follow the forward's total length.
  RopeTables tables;
  BuildRope(torch::arange(start, start + length, torch::kFloat32),
            ComputeRopeFrequencies(c.rope_scaling, c.head_dim(), c.rope_theta,
                                   c.max_seq_len, start + length),
            options_, &tables.cos, &tables.sin_signed);
  return tables;
}

LlamaModel::~LlamaModel() = default;

LlamaModel::Layer& LlamaModel::LayerAt(int64_t layer) {
  const int64_t end = first_layer_ + static_cast<int64_t>(layers_.size());
  TORCH_CHECK(layer >= first_layer_ && layer < end, "layer ", layer,
              " out of range [", first_layer_, ", ", end, ")");
  return *layers_[layer - first_layer_];
}

const std::vector<torch::Tensor>& LlamaModel::CausalMasks(int64_t start,
                                                          int64_t length) {
  if (mask_start_ != start || mask_length_ != length) {
    const LlamaConfig& c = config();
    torch::NoGradGuard no_grad;
    auto index_opts =
        torch::TensorOptions().device(options_.device()).dtype(torch::kInt64);
    torch::Tensor rows = torch::arange(start, start + length, index_opts);
    torch::Tensor cols = torch::arange(start + length, index_opts);
    torch::Tensor full =
        torch::zeros({length, start + length}, options_)
            .masked_fill_(cols.unsqueeze(0) > rows.unsqueeze(1),
                          -std::numeric_limits<double>::infinity());
    masks_.clear();
    for (int64_t s = 0; s < length; s += kAttentionBlock) {
      const int64_t len = std::min(kAttentionBlock, length - s);
      // Rows ordered (group, position) like the queries in Attention.
      masks_.push_back(full.narrow(0, s, len)
                           .narrow(1, 0, start + s + len)
                           .repeat({c.n_heads / c.n_kv_heads, 1}));
    }
    mask_start_ = start;
    mask_length_ = length;
  }
  return masks_;
}

torch::Tensor LlamaModel::Project(Layer& layer, int p, const torch::Tensor& x,
                                  torch::Tensor y) {
  if (!y.defined()) {
    const FrozenWeight* whole = layer.WholeFrozen(p);
    y = whole != nullptr ? FrozenLinear(x, *whole)
                         : torch::matmul(x, layer.W(p).t());
  }
  if (!merged_ && layer.delta[p]) y = y + layer.delta[p]->Forward(x);
  return y;
}

namespace {

// Rotate-half RoPE of x [B, T, heads, hd] with tables [T, 1, hd]:
// x * cos + cat(x2, x1) * sin_signed. split (not narrow) so the backward
// concatenates instead of zero-filling full-size gradients.
torch::Tensor ApplyRope(const torch::Tensor& x, const torch::Tensor& cos,
                        const torch::Tensor& sin_signed) {
  std::vector<torch::Tensor> halves = x.split(x.size(-1) / 2, -1);
  return torch::addcmul(x * cos, torch::cat({halves[1], halves[0]}, -1),
                        sin_signed);
}

}  // namespace

torch::Tensor LlamaModel::Attention(Layer& layer, const torch::Tensor& x,
                                    int64_t index, int64_t start,
                                    const RopeTables& rope, KvCache* cache) {
  const LlamaConfig& c = config();
  const int64_t B = x.size(0), T = x.size(1);
  const int64_t H = c.n_heads, KV = c.n_kv_heads, G = H / KV;
  const int64_t hd = c.head_dim();

  // One matmul for q, k and v when the frozen rows are packed; split (whose
  // backward is one concatenation) rather than narrow.
  std::array<torch::Tensor, 3> qkv;
  if (layer.Qkv().defined() || layer.qkv_frozen != nullptr) {
    torch::Tensor all =
        layer.Qkv().defined()
            ? torch::linear(x, layer.Qkv(), layer.qkv_bias)
            : FrozenLinear(x, *layer.qkv_frozen, layer.qkv_bias);
    std::vector<torch::Tensor> parts =
        all.split_with_sizes({c.q_dim(), c.kv_dim(), c.kv_dim()}, -1);
    for (int p = kQ; p <= kV; ++p) qkv[p] = Project(layer, p, x, parts[p]);
  } else {
    std::vector<torch::Tensor> bias;
    if (layer.qkv_bias.defined()) {
      bias =
          layer.qkv_bias.split_with_sizes({c.q_dim(), c.kv_dim(), c.kv_dim()});
    }
    for (int p = kQ; p <= kV; ++p) {
      const torch::Tensor b = bias.empty() ? torch::Tensor() : bias[p];
      const FrozenWeight* whole = layer.WholeFrozen(p);
      qkv[p] = Project(layer, p, x,
                       whole != nullptr ? FrozenLinear(x, *whole, b)
                                        : torch::linear(x, layer.W(p), b));
    }
  }
  torch::Tensor q = qkv[kQ].view({B, T, H, hd});
  torch::Tensor k = qkv[kK].view({B, T, KV, hd});
  if (layer.q_norm.defined()) {  // Qwen3: RMSNorm over each head, then RoPE
    q = RmsNorm(q, layer.q_norm, c.norm_eps);
    k = RmsNorm(k, layer.k_norm, c.norm_eps);
  }
  q = ApplyRope(q, rope.cos, rope.sin_signed);
  k = ApplyRope(k, rope.cos, rope.sin_signed);

  // Grouped-query attention without repeating k/v: the G query heads that
  // share a kv head are stacked along the row axis of one matmul.
  q = q.view({B, T, KV, G, hd})
          .permute({0, 2, 3, 1, 4})
          .reshape({B * KV, G, T, hd});
  k = k.permute({0, 2, 1, 3}).contiguous();  // [B, KV, T, hd]
  torch::Tensor v =
      qkv[kV].view({B, T, KV, hd}).permute({0, 2, 1, 3}).contiguous();
  if (cache != nullptr) {
    if (cache->k[index].defined()) {
      k = torch::cat({cache->k[index], k}, 2);
      v = torch::cat({cache->v[index], v}, 2);
    }
    cache->k[index] = k;
    cache->v[index] = v;
  }
  const int64_t Tk = k.size(2);
  const torch::Tensor k3 = k.view({B * KV, Tk, hd});
  const torch::Tensor v3 = v.view({B * KV, Tk, hd});
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  torch::Tensor out;  // [B * KV, G, T, hd]
  if (T == 1) {       // one new token attends to everything cached
    torch::Tensor scores =
        torch::bmm(q.view({B * KV, G, hd}), k3.transpose(1, 2)).mul_(scale);
    out = torch::bmm(torch::softmax(scores, -1), v3).view({B * KV, G, 1, hd});
  } else {
    // Causal attention in query blocks: block j only needs the keys up to
    // its last position, which skips the fully masked upper triangle
    // (about 40% of the score matrix at T = 256).
    const std::vector<torch::Tensor>& masks = CausalMasks(start, T);
    std::vector<torch::Tensor> q_blocks;
    if (masks.size() == 1) {
      q_blocks.push_back(q);
    } else {
      q_blocks = q.split(kAttentionBlock, 2);
    }
    std::vector<torch::Tensor> outs;
    for (size_t j = 0; j < q_blocks.size(); ++j) {
      const int64_t len = q_blocks[j].size(2);
      const int64_t keys = masks[j].size(1);
      const torch::Tensor kb = keys == Tk ? k3 : k3.narrow(1, 0, keys);
      const torch::Tensor vb = keys == Tk ? v3 : v3.narrow(1, 0, keys);
      torch::Tensor scores =
          torch::baddbmm(masks[j], q_blocks[j].reshape({B * KV, G * len, hd}),
                         kb.transpose(1, 2), /*beta=*/1.0, /*alpha=*/scale);
      outs.push_back(torch::bmm(torch::softmax(scores, -1), vb)
                         .view({B * KV, G, len, hd}));
    }
    out = outs.size() == 1 ? outs[0] : torch::cat(outs, 2);
  }
  out = out.view({B, KV, G, T, hd})
            .permute({0, 3, 1, 2, 4})
            .reshape({B, T, c.q_dim()});
  return Project(layer, kO, out);
}

torch::Tensor LlamaModel::Mlp(Layer& layer, const torch::Tensor& x) {
  const int64_t h = config().hidden_dim;
  torch::Tensor gate, up;
  if (layer.GateUp().defined() || layer.gu_frozen != nullptr) {
    std::vector<torch::Tensor> gu =
        (layer.GateUp().defined() ? torch::matmul(x, layer.GateUp().t())
                                  : FrozenLinear(x, *layer.gu_frozen))
            .split(h, -1);
    gate = Project(layer, kGate, x, gu[0]);
    up = Project(layer, kUp, x, gu[1]);
  } else {
    gate = Project(layer, kGate, x);
    up = Project(layer, kUp, x);
  }
  return Project(layer, kDown, torch::silu(gate) * up);
}

torch::Tensor LlamaModel::RunLayer(Layer& layer, const torch::Tensor& x,
                                   int64_t index, int64_t start,
                                   const RopeTables& rope, KvCache* cache) {
  const double eps = config().norm_eps;
  torch::Tensor h = Attention(layer, RmsNorm(x, layer.attn_norm, eps), index,
                              start, rope, cache);
  if (layer.attn_adapter) h = layer.attn_adapter->Forward(h);
  torch::Tensor y = x + h;
  h = Mlp(layer, RmsNorm(y, layer.ffn_norm, eps));
  if (layer.mlp_adapter) h = layer.mlp_adapter->Forward(h);
  return y + h;
}

torch::Tensor LlamaModel::RunLayerCheckpointed(int64_t index,
                                               const torch::Tensor& x,
                                               int64_t start,
                                               const RopeTables& rope) {
  Layer& layer = *layers_[index];
  // Every tensor of the layer that may want a gradient: the adapters in
  // its slots (merged deltas are not applied, so not read). The base
  // weights, norms and rope tables are frozen.
  std::vector<torch::Tensor> params;
  for (const auto& delta : layer.delta) {
    if (!delta || merged_) continue;
    for (const torch::Tensor& p : delta->parameters()) params.push_back(p);
  }
  for (const auto* adapter : {&layer.attn_adapter, &layer.mlp_adapter}) {
    if (!*adapter) continue;
    for (const torch::Tensor& p : (*adapter)->parameters()) {
      params.push_back(p);
    }
  }
  // The recompute runs in the backward, after Hidden returned: the rope
  // views are copied into the closure; the layer and `this` outlive the
  // graph as the parameters' owner does.
  return Checkpoint(
      [this, &layer, index, start, rope](const torch::Tensor& in) {
        return RunLayer(layer, in, index, start, rope, nullptr);
      },
      x, params);
}

torch::Tensor LlamaModel::Hidden(const torch::Tensor& tokens, KvCache* cache) {
  const LlamaConfig& c = config();
  TORCH_CHECK(span().Whole(c.n_layers),
              "Hidden needs the whole model; this "
              "one holds ",
              span().Describe(c.n_layers));
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, T], got ", tokens.sizes());
  const int64_t T = tokens.size(1);
  const int64_t start = cache != nullptr ? cache->length : 0;
  TORCH_CHECK(T >= 1, "tokens must hold at least one position");
  TORCH_CHECK(start + T <= c.context_length(), "sequence of ", start + T,
              " tokens exceeds the model's context of ", c.context_length());
  const RopeTables rope = RopeFor(start, T);
  if (cache != nullptr) {
    cache->k.resize(c.n_layers);
    cache->v.resize(c.n_layers);
  }
  const int64_t frozen = std::min<int64_t>(first_trainable_, c.n_layers);
  torch::Tensor x;
  {
    std::optional<torch::NoGradGuard> no_grad;
    if (frozen > 0) no_grad.emplace();
    const torch::Tensor ids = tokens.to(options_.device(), torch::kInt64);
    x = embed_frozen_ != nullptr
            ? embed_frozen_->Gather(ids, options_.dtype().toScalarType())
            : torch::embedding(embed_, ids);
    for (int64_t l = 0; l < frozen; ++l) {
      x = RunLayer(*layers_[l], x, l, start, rope, cache);
    }
  }
  // A cache means generation: nothing to recompute, and a recompute would
  // append the keys twice.
  const bool checkpoint =
      checkpointing_ && cache == nullptr && torch::GradMode::is_enabled();
  for (int64_t l = frozen; l < c.n_layers; ++l) {
    x = checkpoint ? RunLayerCheckpointed(l, x, start, rope)
                   : RunLayer(*layers_[l], x, l, start, rope, cache);
  }
  if (cache != nullptr) cache->length += T;
  return RmsNorm(x, final_norm_, c.norm_eps);
}

torch::Tensor LlamaModel::Embed(const torch::Tensor& tokens) {
  TORCH_CHECK(span().io, "Embed: this model part holds no embeddings (",
              span().Describe(config().n_layers), ")");
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, T], got ", tokens.sizes());
  const torch::Tensor ids = tokens.to(options_.device(), torch::kInt64);
  return embed_frozen_ != nullptr
             ? embed_frozen_->Gather(ids, options_.dtype().toScalarType())
             : torch::embedding(embed_, ids);
}

torch::Tensor LlamaModel::RunLayers(const torch::Tensor& x, KvCache* cache) {
  const LlamaConfig& c = config();
  TORCH_CHECK(cache != nullptr, "RunLayers needs a KV cache");
  TORCH_CHECK(x.dim() == 3 && x.size(2) == c.dim, "hidden states must be [B, ",
              "T, ", c.dim, "], got ", x.sizes());
  const int64_t T = x.size(1);
  const int64_t start = cache->length;
  TORCH_CHECK(T >= 1, "hidden states must hold at least one position");
  TORCH_CHECK(start + T <= c.context_length(), "sequence of ", start + T,
              " tokens exceeds the model's context of ", c.context_length());
  const RopeTables rope = RopeFor(start, T);
  cache->k.resize(c.n_layers);
  cache->v.resize(c.n_layers);
  torch::Tensor h = x.to(options_.device(), options_.dtype());
  for (size_t i = 0; i < layers_.size(); ++i) {
    h = RunLayer(*layers_[i], h, first_layer_ + static_cast<int64_t>(i), start,
                 rope, cache);
  }
  cache->length += T;
  return h;
}

torch::Tensor LlamaModel::Head(const torch::Tensor& x) {
  TORCH_CHECK(span().io, "Head: this model part holds no output layer (",
              span().Describe(config().n_layers), ")");
  return Logits(RmsNorm(x, final_norm_, config().norm_eps));
}

torch::Tensor LlamaModel::Logits(const torch::Tensor& hidden) {
  torch::Tensor logits = lm_head_frozen_ != nullptr
                             ? FrozenLinear(hidden, *lm_head_frozen_)
                             : torch::matmul(hidden, lm_head_.t());
  return logits.to(torch::kFloat32);
}

torch::Tensor LlamaModel::Forward(const torch::Tensor& tokens, KvCache* cache) {
  return Logits(Hidden(tokens, cache));
}

void LlamaModel::SetLinearDelta(int64_t layer, const std::string& projection,
                                std::shared_ptr<LinearDelta> delta) {
  Layer& l = LayerAt(layer);
  const int p = ProjectionIndex(projection);
  TORCH_CHECK(p >= 0, "unknown projection '", projection,
              "' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, "
              "up_proj or down_proj)");
  const bool was_merged = merged_;
  if (was_merged) Unmerge();
  const std::string name = "layers_" + std::to_string(layer) + "_" + projection;
  if (named_children().contains(name)) unregister_module(name);
  if (delta) register_module(name, delta);
  l.delta[p] = std::move(delta);
  if (was_merged) Merge();
}

std::shared_ptr<LinearDelta> LlamaModel::GetLinearDelta(
    int64_t layer, const std::string& projection) {
  const int p = ProjectionIndex(projection);
  TORCH_CHECK(p >= 0, "unknown projection '", projection, "'");
  return LayerAt(layer).delta[p];
}

void LlamaModel::SetSublayerAdapter(int64_t layer, const std::string& place,
                                    std::shared_ptr<SublayerAdapter> adapter) {
  Layer& l = LayerAt(layer);
  TORCH_CHECK(place == "attn" || place == "mlp", "unknown adapter place '",
              place, "' (expected attn or mlp)");
  const std::string name =
      "layers_" + std::to_string(layer) + "_" + place + "_adapter";
  if (named_children().contains(name)) unregister_module(name);
  if (adapter) register_module(name, adapter);
  (place == "attn" ? l.attn_adapter : l.mlp_adapter) = std::move(adapter);
}

std::shared_ptr<SublayerAdapter> LlamaModel::GetSublayerAdapter(
    int64_t layer, const std::string& place) {
  Layer& l = LayerAt(layer);
  TORCH_CHECK(place == "attn" || place == "mlp", "unknown adapter place '",
              place, "' (expected attn or mlp)");
  return place == "attn" ? l.attn_adapter : l.mlp_adapter;
}

torch::Tensor LlamaModel::ProjectionWeight(int64_t layer,
                                           const std::string& projection) {
  const int p = ProjectionIndex(projection);
  TORCH_CHECK(p >= 0, "unknown projection '", projection, "'");
  return LayerAt(layer).W(p);
}

void LlamaModel::MergeLayer(Layer& layer) {
  bool any_qkv = false, any_gu = false;
  for (int p = 0; p < kNumProjections; ++p) {
    if (!layer.delta[p]) continue;
    const torch::Tensor base = layer.W(p);
    layer.merged[p] = base + layer.delta[p]->DeltaWeight().detach().to(
                                 base.device(), base.scalar_type());
    any_qkv |= p <= kV;
    any_gu |= p == kGate || p == kUp;
  }
  if (any_qkv) {
    layer.qkv_merged = torch::cat({layer.W(kQ), layer.W(kK), layer.W(kV)});
  }
  if (any_gu) layer.gu_merged = torch::cat({layer.W(kGate), layer.W(kUp)});
}

void LlamaModel::UnmergeLayer(Layer& layer) {
  for (torch::Tensor& t : layer.merged) t = torch::Tensor();
  layer.qkv_merged = torch::Tensor();
  layer.gu_merged = torch::Tensor();
}

void LlamaModel::Merge() {
  if (merged_) return;
  torch::NoGradGuard no_grad;
  for (auto& layer : layers_) MergeLayer(*layer);
  merged_ = true;
}

void LlamaModel::Unmerge() {
  if (!merged_) return;
  for (auto& layer : layers_) UnmergeLayer(*layer);
  merged_ = false;
}

std::shared_ptr<LlamaWeights> LlamaModel::ExportWeights() {
  TORCH_CHECK(span().Whole(config().n_layers),
              "ExportWeights needs the whole model; this one holds ",
              span().Describe(config().n_layers));
  torch::NoGradGuard no_grad;
  auto out = std::make_shared<LlamaWeights>();
  out->config = weights_->config;
  out->source = weights_->source;
  out->compute_dtype = weights_->compute_dtype;
  out->stored_dtype = weights_->stored_dtype;
  for (const auto& kv : ExpectedTensorShapes(out->config)) {
    out->tensors[kv.first] = weights_->Materialize(kv.first);
  }
  for (int64_t l = 0; l < static_cast<int64_t>(layers_.size()); ++l) {
    for (int p = 0; p < kNumProjections; ++p) {
      out->tensors[ProjectionKey(l, p)] = layers_[l]->W(p);
    }
  }
  // Clone everything; q/k/v and gate/up are copied into fresh packed blocks.
  for (auto& [name, t] : out->tensors) t = t.clone();
  PackProjections(out.get());
  return out;
}

std::shared_ptr<const LlamaModel::RopeTables> LlamaModel::SharedRope(
    int64_t length, const RopeFrequencies& freqs,
    torch::TensorOptions options) {
  using Key =
      std::tuple<int64_t, std::vector<double>, double, int, std::string>;
  static std::mutex mu;
  static std::map<Key, std::weak_ptr<const LlamaModel::RopeTables>> cache;
  Key key{length, freqs.inv_freq, freqs.attention_factor,
          static_cast<int>(c10::typeMetaToScalarType(options.dtype())),
          options.device().str()};
  std::lock_guard<std::mutex> lock(mu);
  if (auto hit = cache[key].lock()) return hit;
  auto tables = std::make_shared<LlamaModel::RopeTables>();
  BuildRope(torch::arange(length, torch::kFloat32), freqs, options,
            &tables->cos, &tables->sin_signed);
  cache[key] = tables;
  return tables;
}

}  // namespace model
}  // namespace fedpeft
