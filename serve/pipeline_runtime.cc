#include "serve/pipeline_runtime.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <utility>

#include "common/config.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/text.h"
#include "delivery/sha256.h"
#include "model/loader.h"
#include "serve/engine.h"

namespace fedpeft {
namespace serve {

TensorMap AdapterTensorsInSpan(const TensorMap& tensors,
                               const model::LayerSpan& span, int64_t n_layers) {
  static const std::string kPrefix = "base_model.model.";
  TensorMap out;
  for (const auto& [key, t] : tensors) {
    const std::string name =
        key.rfind(kPrefix, 0) == 0 ? key.substr(kPrefix.size()) : key;
    // Adapter keys sit inside a layer; one outside any is kept so the
    // adapter check names it.
    if (name.rfind("model.layers.", 0) != 0 || span.Holds(name, n_layers)) {
      out[key] = t;
    }
  }
  return out;
}

StageRuntime::~StageRuntime() = default;

StatusOr<std::unique_ptr<StageRuntime>> StageRuntime::Create(
    const ServeConfig& config,
    std::shared_ptr<const model::LlamaWeights> part) {
  std::unique_ptr<StageRuntime> r(new StageRuntime());
  r->part_ = std::move(part);
  ASSIGN_OR_RETURN(r->device_, model::ParseDevice(config.model.device));
  const int64_t n = r->part_->config.n_layers;
  try {
    if (!config.serve.base_name.empty()) {
      auto plain = std::make_unique<model::LlamaModel>(r->part_);
      plain->to(r->device_);
      plain->eval();
      r->plain_[config.serve.base_name] = std::move(plain);
    }
    for (const auto& [name, dir] : config.serve.adapters) {
      std::string what;
      auto saved = LoadServedAdapter(dir, &what);
      if (!saved.ok()) {
        return saved.status().WithContext("serve.adapters." + name);
      }
      auto peft = peft::PeftModel::Create(r->part_, saved->options, 0);
      Status s = peft.ok() ? (*peft)->LoadAdapterTensors(AdapterTensorsInSpan(
                                 saved->tensors, r->part_->span, n))
                           : peft.status();
      if (!s.ok()) {
        return s.WithContext("serve.adapters." + name + " ('" + dir + "')");
      }
      (*peft)->model().to(r->device_);
      (*peft)->model().eval();
      r->adapters_[name] = std::move(peft).value();
    }
  } catch (const std::exception& e) {
    return Status::Internal(std::string("pipeline stage: building models: ") +
                            e.what());
  }
  return r;
}

StatusOr<torch::Tensor> StageRuntime::Run(uint64_t sequence,
                                          const std::string& name,
                                          int64_t position,
                                          const torch::Tensor& hidden) {
  model::LlamaModel* m = nullptr;
  if (auto it = plain_.find(name); it != plain_.end()) m = it->second.get();
  if (auto it = adapters_.find(name); it != adapters_.end()) {
    m = &it->second->model();
  }
  if (m == nullptr) {
    return Status::InvalidArgument("model '" + name +
                                   "' is not served by this stage");
  }
  model::KvCache& cache = caches_[sequence];
  if (cache.length != position) {
    const int64_t held = cache.length;
    if (held == 0) caches_.erase(sequence);
    return Status::InvalidArgument(
        "sequence " + std::to_string(sequence) + ": activation at position " +
        std::to_string(position) + ", but this stage's KV cache holds " +
        std::to_string(held) + " tokens");
  }
  torch::InferenceMode inference;
  return m->RunLayers(hidden.to(device_), &cache);
}

torch::Tensor StageRuntime::Embed(const std::vector<int64_t>& ids) {
  torch::InferenceMode inference;
  model::LlamaModel& m = plain_.empty() ? adapters_.begin()->second->model()
                                        : *plain_.begin()->second;
  return m.Embed(torch::tensor(ids, torch::kInt64)
                     .view({1, static_cast<int64_t>(ids.size())})
                     .to(device_));
}

torch::Tensor StageRuntime::Logits(const torch::Tensor& hidden) {
  torch::InferenceMode inference;
  model::LlamaModel& m = plain_.empty() ? adapters_.begin()->second->model()
                                        : *plain_.begin()->second;
  return m.Head(hidden.to(device_))[0][-1];
}

StatusOr<ModelIdentity> IdentifyModel(const std::string& path) {
  if (!IsDirectory(path)) {
    return Status::InvalidArgument(
        "model.path '" + path +
        "': a pipeline stage loads only its layers, which needs a Hugging "
        "Face folder (config.json + *.safetensors); convert the model with "
        "`fedpeft export --merge` first");
  }
  ModelIdentity id;
  const std::string config_path = JoinPath(path, "config.json");
  ASSIGN_OR_RETURN(std::string text,
                   ReadFileToString(config_path, kMaxConfigFileBytes));
  ASSIGN_OR_RETURN(id.config, model::ParseHfConfig(text, config_path));
  std::string digest = "config.json\n" + text;
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(path, ec)) {
    names.push_back(entry.path().filename().string());
  }
  if (ec) return Status::IoError(path + ": " + ec.message());
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    if (!EndsWith(name, ".safetensors")) continue;
    const std::string file = JoinPath(path, name);
    std::ifstream in(file, std::ios::binary);
    unsigned char len[8] = {};
    in.read(reinterpret_cast<char*>(len), 8);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
    if (!in || n > kMaxConfigFileBytes) {
      return Status::Corruption(file +
                                ": not a safetensors file (header "
                                "length " +
                                std::to_string(n) + ")");
    }
    std::string header(n, '\0');
    in.read(header.data(), static_cast<std::streamsize>(n));
    if (!in) return Status::Corruption(file + ": truncated header");
    digest += "\n" + name + "\n" + header;
  }
  id.fingerprint = delivery::Sha256Hex(digest);
  return id;
}

namespace {

// Bytes per weight of the frozen matrices under `options`.
double BytesPerWeight(const model::LoadOptions& options) {
  const model::BaseDtype base = options.base_dtype.value_or(
      options.dtype == torch::kFloat32 ? model::BaseDtype::kFloat32
                                       : model::BaseDtype::kBFloat16);
  switch (base) {
    case model::BaseDtype::kFloat32:
      return 4;
    case model::BaseDtype::kInt8:
      return 1;
    case model::BaseDtype::kNf4:
      return 0.5 + 1.0 / 64 + 4.0 / (64 * 256);  // QLoRA's double quant
    default:
      return 2;
  }
}

}  // namespace

uint64_t LayerWeightBytes(const model::LlamaConfig& c,
                          const model::LoadOptions& options) {
  const auto shapes = model::ExpectedTensorShapes(
      c, model::LayerSpan{0, std::min<int64_t>(1, c.n_layers), false});
  double bytes = 0;
  for (const auto& [name, shape] : shapes) {
    double n = 1;
    for (int64_t d : shape) n *= static_cast<double>(d);
    bytes += n * (shape.size() == 2 ? BytesPerWeight(options) : 4);
  }
  return static_cast<uint64_t>(bytes);
}

uint64_t IoWeightBytes(const model::LlamaConfig& c,
                       const model::LoadOptions& options) {
  // int8/nf4 keep these in 16 bits, as QLoRA does.
  const double per = std::max(2.0, BytesPerWeight(options));
  const double matrices = c.tie_embeddings ? 1 : 2;
  return static_cast<uint64_t>(matrices * c.vocab_size * c.dim * per +
                               c.dim * 4);
}

double MeasureBandwidthGbps() {
  torch::InferenceMode inference;
  const torch::Tensor m = torch::rand({2048, 4096});
  const torch::Tensor v = torch::rand({4096, 1});
  std::vector<double> seconds;
  for (int i = 0; i < 9; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    torch::Tensor y = torch::matmul(m, v);
    (void)y.sum().item<float>();
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
            .count());
  }
  std::sort(seconds.begin(), seconds.end());
  return static_cast<double>(m.nbytes()) / seconds[seconds.size() / 2] / 1e9;
}

std::string ToActivationBytes(const torch::Tensor& hidden) {
  const torch::Tensor t = hidden.to(torch::kCPU, torch::kFloat32).contiguous();
  return std::string(static_cast<const char*>(t.data_ptr()),
                     static_cast<size_t>(t.numel()) * sizeof(float));
}

StatusOr<torch::Tensor> FromActivationBytes(const std::string& bytes,
                                            int64_t rows, int64_t dim) {
  const uint64_t want = static_cast<uint64_t>(rows) * dim * sizeof(float);
  if (rows < 1 || bytes.size() != want) {
    return Status::InvalidArgument(
        "activation: " + std::to_string(bytes.size()) + " bytes for " +
        std::to_string(rows) + " rows of " + std::to_string(dim) +
        " float32 values; expected " + std::to_string(want));
  }
  torch::Tensor t = torch::empty({1, rows, dim}, torch::kFloat32);
  std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t;
}

void StageRuntime::Release(uint64_t sequence) { caches_.erase(sequence); }

void StageRuntime::Clear() { caches_.clear(); }

}  // namespace serve
}  // namespace fedpeft
