#include "peft/peft_model.h"

#include <algorithm>
#include <functional>
#include <set>
#include <sstream>

#include "common/logging.h"
#include "common/text.h"
#include "peft/bottleneck.h"
#include "peft/lora.h"

namespace fedpeft {
namespace peft {
namespace {

bool Contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

// Seeds of the per-module generators: a function of (seed, module path) only,
// so a module's initial A does not depend on which other modules exist.
uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t ModuleSeed(uint64_t seed, const std::string& path) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char c : path) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return SplitMix64(SplitMix64(seed) ^ h);
}

// Every range/name error of `options`, reported as (key, message) with keys
// relative to the PEFT section ("lora.r"). `n_layers` < 0 skips the layer
// upper bound (unknown while reading a config).
void CheckOptions(
    const PeftOptions& options, int64_t n_layers,
    const std::function<void(const std::string&, const std::string&)>& error) {
  auto check_layers = [&](const std::string& key,
                          const std::vector<int>& layers) {
    std::set<int> seen;
    for (int layer : layers) {
      if (layer < 0 || (n_layers >= 0 && layer >= n_layers)) {
        std::string expected =
            n_layers >= 0 ? "in [0, " + std::to_string(n_layers - 1) + "]"
                          : ">= 0";
        error(key,
              "layer index must be " + expected + ", got " +
                  std::to_string(layer) +
                  (n_layers >= 0 ? " (the base model has " +
                                       std::to_string(n_layers) + " layers)"
                                 : ""));
      } else if (!seen.insert(layer).second) {
        error(key, "layer " + std::to_string(layer) + " listed twice");
      }
    }
  };
  if (options.method != "lora" && options.method != "bottleneck") {
    error("method",
          "expected one of lora, bottleneck, got '" + options.method + "'");
  }
  if (options.method == "lora") {
    const LoraOptions& o = options.lora;
    if (o.r < 1) error("lora.r", "must be >= 1, got " + std::to_string(o.r));
    if (!(o.alpha > 0)) {
      error("lora.alpha", "must be > 0, got " + ToConfigString(o.alpha));
    }
    if (!(o.dropout >= 0 && o.dropout < 1)) {
      error("lora.dropout",
            "must be in [0, 1), got " + ToConfigString(o.dropout));
    }
    if (o.target_modules.empty()) {
      error("lora.target_modules",
            "must name at least one of " + Join(model::ProjectionNames()));
    }
    for (const std::string& t : o.target_modules) {
      if (!Contains(model::ProjectionNames(), t)) {
        // Norms (Qwen3's q_norm/k_norm too) are frozen base weights.
        error("lora.target_modules",
              "unknown module '" + t + "', expected some of " +
                  Join(model::ProjectionNames()) +
                  (t.find("norm") != std::string::npos
                       ? " (norms are frozen base weights, never LoRA "
                         "targets)"
                       : ""));
      }
    }
    check_layers("lora.layers_to_transform", o.layers_to_transform);
    for (const auto& [key, r] : o.rank_pattern) {
      if (r < 1) {
        error("lora.rank_pattern." + key,
              "must be >= 1, got " + std::to_string(r));
      }
    }
    for (const auto& [key, alpha] : o.alpha_pattern) {
      if (!(alpha > 0)) {
        error("lora.alpha_pattern." + key,
              "must be > 0, got " + ToConfigString(alpha));
      }
    }
  } else if (options.method == "bottleneck") {
    const BottleneckOptions& o = options.bottleneck;
    if (o.bottleneck_dim < 1) {
      error("bottleneck.bottleneck_dim",
            "must be >= 1, got " + std::to_string(o.bottleneck_dim));
    }
    if (o.places.empty()) {
      error("bottleneck.places", "must name at least one of attn, mlp");
    }
    std::set<std::string> seen;
    for (const std::string& p : o.places) {
      if (p != "attn" && p != "mlp") {
        error("bottleneck.places",
              "unknown place '" + p + "', expected some of attn, mlp");
      } else if (!seen.insert(p).second) {
        error("bottleneck.places", "'" + p + "' listed twice");
      }
    }
    if (!Contains(BottleneckActivations(), o.activation)) {
      error("bottleneck.activation", "expected one of " +
                                         Join(BottleneckActivations()) +
                                         ", got '" + o.activation + "'");
    }
    check_layers("bottleneck.layers_to_transform", o.layers_to_transform);
  }
}

// Length of the suffix of `path` that `key` matches on a dot boundary (PEFT
// matches rank_pattern keys with "(.*\.)?key$"), 0 when it does not.
size_t SuffixMatch(const std::string& path, const std::string& key) {
  if (key.empty() || key.size() > path.size()) return 0;
  if (path.compare(path.size() - key.size(), key.size(), key) != 0) return 0;
  if (key.size() < path.size() && path[path.size() - key.size() - 1] != '.') {
    return 0;
  }
  return key.size();
}

template <typename V>
const V* MostSpecific(const std::map<std::string, V>& pattern,
                      const std::string& path) {
  const V* best = nullptr;
  size_t best_len = 0;
  for (const auto& [key, value] : pattern) {
    size_t len = SuffixMatch(path, key);
    if (len > best_len) {
      best_len = len;
      best = &value;
    }
  }
  return best;
}

std::vector<int64_t> LayersOf(const std::vector<int>& layers,
                              int64_t n_layers) {
  std::vector<int64_t> out;
  if (layers.empty()) {
    for (int64_t i = 0; i < n_layers; ++i) out.push_back(i);
  } else {
    out.assign(layers.begin(), layers.end());
    std::sort(out.begin(), out.end());
  }
  return out;
}

std::string LayerPath(int64_t layer) {
  return "model.layers." + std::to_string(layer);
}

}  // namespace

void PeftOptions::Read(ConfigReader& in) {
  in.Get("method", &method);
  ConfigReader l = in.Section("lora");
  l.Get("r", &lora.r);
  l.Get("alpha", &lora.alpha);
  l.Get("dropout", &lora.dropout);
  l.Get("target_modules", &lora.target_modules);
  l.Get("layers_to_transform", &lora.layers_to_transform);
  l.Get("rank_pattern", &lora.rank_pattern);
  l.Get("alpha_pattern", &lora.alpha_pattern);
  l.Get("use_rslora", &lora.use_rslora);
  ConfigReader b = in.Section("bottleneck");
  b.Get("bottleneck_dim", &bottleneck.bottleneck_dim);
  b.Get("places", &bottleneck.places);
  b.Get("activation", &bottleneck.activation);
  b.Get("layers_to_transform", &bottleneck.layers_to_transform);
  CheckOptions(*this, /*n_layers=*/-1,
               [&](const std::string& key, const std::string& message) {
                 in.Check(false, key, message);
               });
}

Status ValidatePeftOptions(const PeftOptions& options, int64_t n_layers) {
  std::vector<std::string> errors;
  CheckOptions(options, n_layers,
               [&](const std::string& key, const std::string& message) {
                 errors.push_back(key + ": " + message);
               });
  if (errors.empty()) return Status::Ok();
  std::string msg = "invalid PEFT options: ";
  for (size_t i = 0; i < errors.size(); ++i) {
    if (i) msg += "; ";
    msg += errors[i];
  }
  return Status::InvalidArgument(msg);
}

int RankFor(const LoraOptions& options, const std::string& module_path) {
  const int* r = MostSpecific(options.rank_pattern, module_path);
  return r ? *r : options.r;
}

double AlphaFor(const LoraOptions& options, const std::string& module_path) {
  const double* alpha = MostSpecific(options.alpha_pattern, module_path);
  return alpha ? *alpha : options.alpha;
}

StatusOr<std::unique_ptr<PeftModel>> PeftModel::Create(
    std::shared_ptr<const model::LlamaWeights> base, const PeftOptions& options,
    uint64_t seed) {
  if (!base) return Status::InvalidArgument("PeftModel: no base model");
  const model::LlamaConfig& config = base->config;
  RETURN_IF_ERROR(
      ValidatePeftOptions(options, config.n_layers).WithContext("PeftModel"));

  std::unique_ptr<PeftModel> peft(new PeftModel());
  peft->options_ = options;
  try {
    peft->model_ = std::make_shared<model::LlamaModel>(base);
    const torch::Device device = base->device();
    if (options.method == "lora") {
      const LoraOptions& o = options.lora;
      for (int64_t layer : LayersOf(o.layers_to_transform, config.n_layers)) {
        if (!base->span.HoldsLayer(layer, config.n_layers)) continue;
        // ProjectionNames() order, so targets listed twice inject once.
        for (const std::string& proj : model::ProjectionNames()) {
          if (!Contains(o.target_modules, proj)) continue;
          const std::string path = LayerPath(layer) + "." +
                                   model::ProjectionParent(proj) + "." + proj;
          const std::vector<int64_t> w = base->Shape(path + ".weight");
          LoraShape shape{w[1], w[0], RankFor(o, path)};
          auto lora = std::make_shared<LoraLinear>(
              shape, AlphaFor(o, path), o.dropout, o.use_rslora,
              ModuleSeed(seed, path), device);
          peft->model_->SetLinearDelta(layer, proj, lora);
          peft->lora_[path] = lora;
        }
      }
      auto warn_unused = [&](const std::string& name, const auto& pattern) {
        for (const auto& entry : pattern) {
          bool used = false;
          for (const auto& kv : peft->lora_) {
            used = used || SuffixMatch(kv.first, entry.first) > 0;
          }
          if (!used) {
            FP_LOG_WARN("peft", "lora.{} key '{}' matches no adapted module",
                        name, entry.first);
          }
        }
      };
      warn_unused("rank_pattern", o.rank_pattern);
      warn_unused("alpha_pattern", o.alpha_pattern);
    } else {
      const BottleneckOptions& o = options.bottleneck;
      for (int64_t layer : LayersOf(o.layers_to_transform, config.n_layers)) {
        if (!base->span.HoldsLayer(layer, config.n_layers)) continue;
        for (const std::string place : {"attn", "mlp"}) {
          if (!Contains(o.places, place)) continue;
          const std::string path = LayerPath(layer) + "." + place + "_adapter";
          auto adapter = std::make_shared<BottleneckAdapter>(
              config.dim, o.bottleneck_dim, o.activation,
              ModuleSeed(seed, path), device);
          peft->model_->SetSublayerAdapter(layer, place, adapter);
          peft->bottleneck_[path] = adapter;
        }
      }
    }
  } catch (const std::exception& e) {
    return Status::Internal(std::string("PeftModel: building adapters: ") +
                            e.what());
  }
  return peft;
}

std::vector<torch::Tensor> PeftModel::TrainableParameters() {
  return model_->parameters();
}

int64_t PeftModel::NumTrainableParameters() {
  int64_t n = 0;
  for (const torch::Tensor& p : TrainableParameters()) n += p.numel();
  return n;
}

TensorMap PeftModel::AdapterTensors() {
  TensorMap out;
  for (const auto& [path, lora] : lora_) {
    out["base_model.model." + path + ".lora_A.weight"] = lora->lora_A();
    out["base_model.model." + path + ".lora_B.weight"] = lora->lora_B();
  }
  for (const auto& [path, adapter] : bottleneck_) {
    const std::string prefix = "base_model.model." + path;
    out[prefix + ".down.weight"] = adapter->down()->weight;
    out[prefix + ".down.bias"] = adapter->down()->bias;
    out[prefix + ".up.weight"] = adapter->up()->weight;
    out[prefix + ".up.bias"] = adapter->up()->bias;
  }
  return out;
}

Status PeftModel::LoadAdapterTensors(const TensorMap& tensors,
                                     bool allow_partial) {
  TensorMap params = AdapterTensors();
  // Validate everything before copying anything.
  for (const auto& [key, t] : tensors) {
    auto it = params.find(key);
    if (it == params.end()) {
      std::string hint =
          params.empty() ? "" : " (e.g. '" + params.begin()->first + "')";
      return Status::InvalidArgument(
          "adapter tensor '" + key + "': unknown key; this " + options_.method +
          " model has " + std::to_string(params.size()) + " adapter tensors" +
          hint + ", check target_modules / layers_to_transform / places");
    }
    if (!t.defined() || t.sizes() != it->second.sizes()) {
      return Status::InvalidArgument(
          "adapter tensor '" + key + "': shape " +
          (t.defined() ? ShapeString(t.sizes()) : "undefined") + ", expected " +
          ShapeString(it->second.sizes()) +
          " from the base model and the adapter options (maybe wrong base "
          "model?)");
    }
    if (!t.is_floating_point()) {
      return Status::InvalidArgument(
          "adapter tensor '" + key + "': expected a float tensor, got " +
          std::string(c10::toString(t.scalar_type())));
    }
  }
  if (!allow_partial) {
    std::vector<std::string> missing;
    for (const auto& kv : params) {
      if (!tensors.count(kv.first)) missing.push_back(kv.first);
    }
    if (!missing.empty()) {
      return Status::InvalidArgument(
          "adapter tensors: " + std::to_string(missing.size()) +
          " missing, first '" + missing.front() + "'");
    }
  }
  try {
    torch::NoGradGuard no_grad;
    for (const auto& [key, t] : tensors) {
      torch::Tensor& p = params.at(key);
      p.copy_(t.to(p.device(), p.scalar_type()));
    }
  } catch (const std::exception& e) {
    return Status::Internal("copying adapter tensors: " +
                            std::string(e.what()));
  }
  return Status::Ok();
}

Status PeftModel::Merge() {
  if (options_.method != "lora") {
    return Status::FailedPrecondition(
        "Merge: " + options_.method +
        " adapters are not linear in the weights and cannot be merged; "
        "run them unmerged");
  }
  try {
    model_->Merge();
  } catch (const std::exception& e) {
    return Status::Internal(std::string("Merge: ") + e.what());
  }
  return Status::Ok();
}

Status PeftModel::Unmerge() {
  if (options_.method != "lora") {
    return Status::FailedPrecondition("Unmerge: " + options_.method +
                                      " adapters cannot be merged");
  }
  try {
    model_->Unmerge();
  } catch (const std::exception& e) {
    return Status::Internal(std::string("Unmerge: ") + e.what());
  }
  return Status::Ok();
}

void PeftModel::Train(bool on) { model_->train(on); }

double LoraScaling(const LoraOptions& options, double alpha, int64_t r) {
  return options.use_rslora ? alpha / std::sqrt(static_cast<double>(r))
                            : alpha / static_cast<double>(r);
}

PeftOptions WithUniformRank(const PeftOptions& options, int64_t rank) {
  PeftOptions out = options;
  const double r0 = options.lora.r;
  const double ratio = static_cast<double>(rank) / r0;
  out.lora.r = static_cast<int>(rank);
  out.lora.alpha =
      options.lora.alpha * (options.lora.use_rslora ? std::sqrt(ratio) : ratio);
  return out;
}

}  // namespace peft
}  // namespace fedpeft
