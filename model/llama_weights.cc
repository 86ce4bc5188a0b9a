// LlamaWeights: validation, lookup of tensors that may live in a frozen
// low-precision block, and the conversion into that form (FreezeWeights).
#include <optional>
#include <utility>

#include "model/llama.h"
#include "model/llama_internal.h"

namespace fedpeft {
namespace model {

using namespace internal;  // NOLINT(build/namespaces)

std::string QkvKey(int64_t layer) {
  return LayerPrefix(layer) + "self_attn.qkv_proj";
}

std::string GateUpKey(int64_t layer) {
  return LayerPrefix(layer) + "mlp.gate_up_proj";
}

namespace internal {

std::optional<FrozenSlice> FindFrozen(const LlamaWeights& w,
                                      const std::string& name) {
  auto it = w.frozen.find(name);
  if (it != w.frozen.end())
    return FrozenSlice{&it->second, 0, it->second.rows()};
  // "model.layers.N.<parent>.<projection>.weight" inside a packed block.
  static const std::string kPrefix = "model.layers.";
  if (name.rfind(kPrefix, 0) != 0) return std::nullopt;
  size_t pos = kPrefix.size();
  int64_t layer = 0;
  const size_t digits_begin = pos;
  while (pos < name.size() && name[pos] >= '0' && name[pos] <= '9' &&
         pos - digits_begin < 9) {
    layer = layer * 10 + (name[pos++] - '0');
  }
  if (pos == digits_begin) return std::nullopt;
  const LlamaConfig& c = w.config;
  for (int p : {kQ, kK, kV, kGate, kUp}) {
    if (name != ProjectionKey(layer, p)) continue;
    const bool qkv = p <= kV;
    auto block = w.frozen.find(qkv ? QkvKey(layer) : GateUpKey(layer));
    if (block == w.frozen.end()) return std::nullopt;
    int64_t offset = 0, rows = 0;
    switch (p) {
      case kQ:
        rows = c.q_dim();
        break;
      case kK:
        offset = c.q_dim();
        rows = c.kv_dim();
        break;
      case kV:
        offset = c.q_dim() + c.kv_dim();
        rows = c.kv_dim();
        break;
      case kGate:
        rows = c.hidden_dim;
        break;
      default:  // kUp
        offset = c.hidden_dim;
        rows = c.hidden_dim;
        break;
    }
    return FrozenSlice{&block->second, offset, rows};
  }
  return std::nullopt;
}

void FreezeLayer(LlamaWeights* w, int64_t layer, BaseDtype kind,
                 bool in_place) {
  torch::NoGradGuard no_grad;
  auto take = [w](const std::string& name) {
    auto it = w->tensors.find(name);
    TORCH_CHECK(it != w->tensors.end(), "FreezeLayer: no tensor '", name, "'");
    torch::Tensor t = std::move(it->second);
    w->tensors.erase(it);
    return t;
  };
  auto block = [&](std::initializer_list<int> ps) {
    std::vector<torch::Tensor> parts;
    for (int p : ps) parts.push_back(take(ProjectionKey(layer, p)));
    torch::Tensor fused = FusedAlias(parts);
    return FrozenWeight::From(fused.defined() ? fused : torch::cat(parts, 0),
                              kind);
  };
  if (in_place) {
    for (int p = 0; p < kNumProjections; ++p) {
      const std::string key = ProjectionKey(layer, p);
      w->frozen[key] = FrozenWeight::Dense(take(key));
    }
    return;
  }
  w->frozen[QkvKey(layer)] = block({kQ, kK, kV});
  w->frozen[GateUpKey(layer)] = block({kGate, kUp});
  for (int p : {kO, kDown}) {
    const std::string key = ProjectionKey(layer, p);
    w->frozen[key] = FrozenWeight::From(take(key), kind);
  }
}

void FreezeEmbeddings(LlamaWeights* w, BaseDtype kind) {
  torch::NoGradGuard no_grad;
  // QLoRA keeps the embeddings and the output layer in 16 bits.
  const BaseDtype dense = IsQuantized(kind) ? BaseDtype::kBFloat16 : kind;
  for (const char* name : {"model.embed_tokens.weight", "lm_head.weight"}) {
    auto it = w->tensors.find(name);
    if (it == w->tensors.end()) continue;  // tied
    w->frozen[name] = FrozenWeight::From(it->second, dense);
    w->tensors.erase(it);
  }
}

}  // namespace internal

bool BaseIsPlain(BaseDtype base_dtype, torch::Dtype compute_dtype) {
  return !IsQuantized(base_dtype) &&
         DenseStorageDtype(base_dtype) == compute_dtype;
}

void FreezeWeights(LlamaWeights* weights, BaseDtype base_dtype) {
  weights->base_dtype = base_dtype;
  if (BaseIsPlain(base_dtype, weights->compute_dtype)) return;
  FreezeEmbeddings(weights, base_dtype);
  const LayerSpan& span = weights->span;
  for (int64_t l = span.begin; l < span.End(weights->config.n_layers); ++l) {
    FreezeLayer(weights, l, base_dtype);
  }
}

Status LlamaWeights::Validate() const {
  RETURN_IF_ERROR(config.Validate());
  RETURN_IF_ERROR(span.Validate(config.n_layers));
  std::vector<std::string> errors;
  std::optional<torch::Dtype> dtype;
  for (const auto& [name, shape] : ExpectedTensorShapes(config, span)) {
    auto it = tensors.find(name);
    if (it == tensors.end() || !it->second.defined()) {
      std::optional<FrozenSlice> f = FindFrozen(*this, name);
      if (!f) {
        errors.push_back("tensor '" + name + "' is missing (expected shape " +
                         ShapeString(shape) + ")");
      } else if (f->weight->cols() != shape[1] || f->rows != shape[0] ||
                 f->offset + f->rows > f->weight->rows()) {
        errors.push_back(
            "tensor '" + name + "' has shape [" + std::to_string(f->rows) +
            ", " + std::to_string(f->weight->cols()) + "] in a block of " +
            std::to_string(f->weight->rows()) + " rows, expected " +
            ShapeString(shape));
      }
      continue;
    }
    const torch::Tensor& t = it->second;
    if (t.sizes() != torch::IntArrayRef(shape)) {
      errors.push_back("tensor '" + name + "' has shape " +
                       ShapeString(t.sizes()) + ", expected " +
                       ShapeString(shape));
    }
    if (!t.is_floating_point()) {
      errors.push_back("tensor '" + name + "' has dtype " +
                       std::string(c10::toString(t.scalar_type())) +
                       ", expected a floating-point dtype");
    } else if (!dtype) {
      dtype = t.scalar_type();
    } else if (*dtype != t.scalar_type()) {
      errors.push_back("tensor '" + name + "' has dtype " +
                       std::string(c10::toString(t.scalar_type())) +
                       ", the others " + c10::toString(*dtype));
    }
  }
  if (errors.empty()) return Status::Ok();
  std::string msg = source.empty() ? "model weights" : source;
  msg += ": ";
  const size_t kShown = 8;
  for (size_t i = 0; i < errors.size() && i < kShown; ++i) {
    if (i > 0) msg += "; ";
    msg += errors[i];
  }
  if (errors.size() > kShown) {
    msg += "; and " + std::to_string(errors.size() - kShown) + " more";
  }
  msg += " (maybe wrong base model?)";
  return Status::InvalidArgument(msg);
}

const torch::Tensor& LlamaWeights::Get(const std::string& name) const {
  auto it = tensors.find(name);
  TORCH_CHECK(it != tensors.end(), "model weights have no tensor '", name, "'",
              frozen.empty() ? "" : " (frozen blocks: use Materialize)");
  return it->second;
}

torch::Tensor LlamaWeights::Materialize(const std::string& name) const {
  auto it = tensors.find(name);
  if (it != tensors.end()) return it->second;
  std::optional<FrozenSlice> f = FindFrozen(*this, name);
  TORCH_CHECK(f.has_value(), "model weights have no tensor '", name, "'");
  return f->weight->Rows(f->offset, f->rows, compute_dtype);
}

std::vector<int64_t> LlamaWeights::Shape(const std::string& name) const {
  auto it = tensors.find(name);
  if (it != tensors.end()) return it->second.sizes().vec();
  std::optional<FrozenSlice> f = FindFrozen(*this, name);
  TORCH_CHECK(f.has_value(), "model weights have no tensor '", name, "'");
  return {f->rows, f->weight->cols()};
}

torch::Device LlamaWeights::device() const {
  if (!tensors.empty()) return tensors.begin()->second.device();
  if (!frozen.empty()) return frozen.begin()->second.device();
  return torch::kCPU;
}

int64_t LlamaWeights::nbytes() const {
  int64_t n = 0;
  for (const auto& [name, t] : tensors) {
    // Packed projections alias one block: count each storage once.
    if (t.defined() && t.storage_offset() == 0) {
      n += static_cast<int64_t>(t.storage().nbytes());
    }
  }
  for (const auto& [name, f] : frozen) n += f.nbytes();
  return n;
}

}  // namespace model
}  // namespace fedpeft
