#include "peft/gguf_lora.h"

#include <map>
#include <utility>

#include "model/gguf_export.h"
#include "model/gguf_writer.h"

namespace fedpeft {
namespace peft {
namespace {

constexpr char kGgufLoraKeyPrefix[] = "base_model.model.";

struct GgufLoraPair {
  torch::Tensor a;  // [r, in]
  torch::Tensor b;  // [out, r]
};

// "base_model.model.<module>.lora_A.weight" -> module and 'A'/'B'.
bool GgufLoraSplitKey(const std::string& key, std::string* module,
                      char* which) {
  const std::string prefix = kGgufLoraKeyPrefix;
  for (char w : {'A', 'B'}) {
    const std::string suffix = std::string(".lora_") + w + ".weight";
    if (key.size() > prefix.size() + suffix.size() &&
        key.compare(0, prefix.size(), prefix) == 0 &&
        key.compare(key.size() - suffix.size(), suffix.size(), suffix) == 0) {
      *module =
          key.substr(prefix.size(), key.size() - prefix.size() - suffix.size());
      *which = w;
      return true;
    }
  }
  return false;
}

}  // namespace

Status WriteGgufLora(const PeftOptions& options, const TensorMap& tensors,
                     const model::LlamaConfig& config, const std::string& path,
                     const std::string& name) {
  if (options.method != "lora") {
    return Status::Unimplemented(
        "GGUF export: only LoRA adapters have a llama.cpp GGUF layout, this "
        "one is '" +
        options.method + "': export it with --merge instead");
  }
  ASSIGN_OR_RETURN(std::string arch, model::GgufArchitecture(config));
  std::map<std::string, GgufLoraPair> pairs;  // module path -> A, B
  for (const auto& [key, t] : tensors) {
    std::string module;
    char which = 0;
    if (!GgufLoraSplitKey(key, &module, &which) ||
        model::GgufTensorName(module + ".weight").empty()) {
      return Status::InvalidArgument(
          "GGUF export: adapter key '" + key +
          "' is not 'base_model.model.model.layers.<N>.<self_attn|mlp>."
          "<proj>.lora_<A|B>.weight'");
    }
    (which == 'A' ? pairs[module].a : pairs[module].b) = t;
  }
  if (pairs.empty()) {
    return Status::InvalidArgument("GGUF export: the adapter has no tensors");
  }
  // llama.cpp applies alpha / rank when alpha is non-zero, else 1: fold the
  // true scale into lora_b against whichever it will apply.
  const double alpha_file = options.lora.alpha > 0 ? options.lora.alpha : 0.0;
  model::GgufWriter w;
  w.SetString("general.architecture", arch);
  w.SetString("general.type", "adapter");
  if (!name.empty()) w.SetString("general.name", name);
  w.SetString("adapter.type", "lora");
  w.SetFloat32("adapter.lora.alpha", static_cast<float>(alpha_file));
  try {
    for (const auto& [module, pair] : pairs) {
      if (!pair.a.defined() || !pair.b.defined()) {
        return Status::InvalidArgument(
            "GGUF export: module '" + module + "' has lora_" +
            (pair.a.defined() ? "A" : "B") + " but no lora_" +
            (pair.a.defined() ? "B" : "A"));
      }
      const int64_t r = pair.a.size(0);
      if (pair.a.dim() != 2 || pair.b.dim() != 2 || pair.b.size(1) != r) {
        return Status::InvalidArgument(
            "GGUF export: module '" + module + "': lora_A " +
            c10::str(pair.a.sizes()) + " and lora_B " +
            c10::str(pair.b.sizes()) + " are not [r, in] and [out, r]");
      }
      const double scale =
          LoraScaling(options.lora, AlphaFor(options.lora, module), r);
      const double fold =
          alpha_file > 0 ? scale * static_cast<double>(r) / alpha_file : scale;
      const std::string projection = module.substr(module.rfind('.') + 1);
      torch::Tensor b = pair.b.detach().to(torch::kCPU, torch::kFloat64) * fold;
      b = model::GgufRowOrder(b.to(torch::kFloat32), arch, projection, config);
      const std::string base = model::GgufTensorName(module + ".weight");
      RETURN_IF_ERROR(
          w.AddTensor(base + ".lora_a", pair.a, model::GgufTensorType::kF32));
      RETURN_IF_ERROR(
          w.AddTensor(base + ".lora_b", b, model::GgufTensorType::kF32));
    }
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("GGUF export of the adapter: ") +
                            e.what_without_backtrace());
  }
  return w.Write(path);
}

}  // namespace peft
}  // namespace fedpeft
