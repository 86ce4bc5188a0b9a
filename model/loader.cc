#include "model/loader.h"

#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "common/config.h"
#include "common/file_util.h"
#include "common/json_util.h"
#include "common/logging.h"
#include "common/text.h"
#include "model/llama_internal.h"
#include "model/safetensors.h"

namespace fedpeft {
namespace model {
namespace {

constexpr char kConfigFile[] = "config.json";
constexpr char kWeightsFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

Status CheckComputeDtype(torch::Dtype dtype) {
  if (dtype == torch::kFloat32 || dtype == torch::kFloat16 ||
      dtype == torch::kBFloat16 || dtype == torch::kFloat64) {
    return Status::Ok();
  }
  return Status::InvalidArgument(std::string("LoadOptions.dtype is ") +
                                 c10::toString(dtype) +
                                 ", expected Float, Half, BFloat16 or Double");
}

// Joins up to `limit` messages with "; ", then "and N more".
std::string JoinErrors(const std::vector<std::string>& errors,
                       size_t limit = 8) {
  std::string msg;
  for (size_t i = 0; i < errors.size() && i < limit; ++i) {
    if (i > 0) msg += "; ";
    msg += errors[i];
  }
  if (errors.size() > limit) {
    msg += "; and " + std::to_string(errors.size() - limit) + " more";
  }
  return msg;
}

// `text` as JSON; `source` names it in the error.
StatusOr<nlohmann::json> ParseJson(std::string_view text,
                                   const std::string& source) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(),
                                           /*cb=*/nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return Status::InvalidArgument(source + ": not valid JSON");
  }
  return j;
}

StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text,
                   ReadFileToString(path, kMaxConfigFileBytes));
  return ParseJson(text, path);
}

// The shard files of a HF folder: model.safetensors, or the files named by
// the weight_map of model.safetensors.index.json (also returned, name ->
// file, for cross-checking).
Status FindShards(const std::string& dir, std::vector<std::string>* shards,
                  std::map<std::string, std::string>* weight_map) {
  const std::string single = JoinPath(dir, kWeightsFile);
  if (PathExists(single)) {
    shards->push_back(single);
    return Status::Ok();
  }
  const std::string index_path = JoinPath(dir, kIndexFile);
  if (!PathExists(index_path)) {
    return Status::NotFound(
        dir + ": neither " + kWeightsFile + " nor " + kIndexFile +
        " exists (only safetensors weights are read; convert a "
        "pytorch_model.bin with save_pretrained(safe_serialization=True))");
  }
  ASSIGN_OR_RETURN(nlohmann::json index, ReadJsonFile(index_path));
  if (!index.is_object() || !index.contains("weight_map") ||
      !index.at("weight_map").is_object()) {
    return Status::InvalidArgument(index_path +
                                   ": key 'weight_map' is missing or not an "
                                   "object of tensor name -> shard file");
  }
  std::set<std::string> seen;
  for (const auto& [name, file] : index.at("weight_map").items()) {
    if (!file.is_string() || file.get<std::string>().empty() ||
        file.get<std::string>().find('/') != std::string::npos) {
      return Status::InvalidArgument(index_path + ": weight_map['" + name +
                                     "'] is " + JsonBrief(file) +
                                     ", expected a file name in " + dir);
    }
    const std::string shard = JoinPath(dir, file.get<std::string>());
    (*weight_map)[name] = shard;
    if (seen.insert(shard).second) shards->push_back(shard);
  }
  if (shards->empty()) {
    return Status::InvalidArgument(index_path + ": weight_map is empty");
  }
  return Status::Ok();
}

struct Located {
  const SafetensorsEntry* entry = nullptr;
  size_t shard = 0;
};

}  // namespace

StatusOr<torch::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return torch::Device(torch::kCPU);
  int64_t index = -1;
  bool ok = name == "cuda";
  if (!ok && name.rfind("cuda:", 0) == 0 && name.size() > 5 &&
      name.size() <= 8) {
    ok = true;
    index = 0;
    for (size_t i = 5; i < name.size(); ++i) {
      if (name[i] < '0' || name[i] > '9') ok = false;
      index = index * 10 + (name[i] - '0');
    }
  }
  if (!ok) {
    return Status::InvalidArgument("device '" + name +
                                   "': expected cpu, cuda or cuda:N");
  }
  if (!torch::cuda::is_available()) {
    return Status::FailedPrecondition(
        "device '" + name +
        "': no CUDA device available to this LibTorch build; use cpu");
  }
  if (index >= static_cast<int64_t>(torch::cuda::device_count())) {
    return Status::InvalidArgument("device '" + name + "': only " +
                                   std::to_string(torch::cuda::device_count()) +
                                   " CUDA devices");
  }
  return torch::Device(torch::kCUDA,
                       static_cast<c10::DeviceIndex>(index < 0 ? 0 : index));
}

torch::Tensor PermuteInterleavedToHalves(const torch::Tensor& w,
                                         int64_t n_heads) {
  const int64_t out = w.size(0);
  const int64_t in = w.dim() > 1 ? w.size(1) : 1;
  TORCH_CHECK(out % (2 * n_heads) == 0, "rows ", out, " not divisible into ",
              n_heads, " heads of even size");
  return w.reshape({n_heads, out / n_heads / 2, 2, in})
      .transpose(1, 2)
      .reshape(w.sizes());
}

torch::Tensor PermuteHalvesToInterleaved(const torch::Tensor& w,
                                         int64_t n_heads) {
  const int64_t out = w.size(0);
  const int64_t in = w.dim() > 1 ? w.size(1) : 1;
  TORCH_CHECK(out % (2 * n_heads) == 0, "rows ", out, " not divisible into ",
              n_heads, " heads of even size");
  return w.reshape({n_heads, 2, out / n_heads / 2, in})
      .transpose(1, 2)
      .reshape(w.sizes());
}

StatusOr<LlamaConfig> ParseHfConfig(std::string_view text,
                                    const std::string& source) {
  ASSIGN_OR_RETURN(nlohmann::json j, ParseJson(text, source));
  return LlamaConfig::FromHfJson(j, source);
}

StatusOr<std::shared_ptr<const LlamaWeights>> LoadModel(
    const std::string& path, const LoadOptions& options) {
  if (IsDirectory(path)) return LoadHfModel(path, options);
  if (!PathExists(path)) {
    return Status::NotFound("model path '" + path + "' does not exist");
  }
  // llama2.c and GGUF files are read whole, then cut to the span.
  auto part = [&options](StatusOr<std::shared_ptr<const LlamaWeights>> w)
      -> StatusOr<std::shared_ptr<const LlamaWeights>> {
    if (!w.ok() || options.span.Whole((*w)->config.n_layers)) return w;
    RETURN_IF_ERROR(
        options.span.Validate((*w)->config.n_layers).WithContext((*w)->source));
    auto cut = std::make_shared<LlamaWeights>(**w);
    RestrictToSpan(cut.get(), options.span);
    return std::shared_ptr<const LlamaWeights>(std::move(cut));
  };
  if (EndsWith(path, ".bin")) return part(LoadLlama2cModel(path, options));
  if (EndsWith(path, ".gguf")) return part(LoadGgufModel(path, options));
  return Status::InvalidArgument(
      "model '" + path +
      "': unknown layout; expected a Hugging Face folder (config.json + "
      "model.safetensors), a llama2.c checkpoint ending in .bin or a GGUF "
      "file ending in .gguf");
}

StatusOr<std::shared_ptr<const LlamaWeights>> LoadHfModel(
    const std::string& dir, const LoadOptions& options) {
  RETURN_IF_ERROR(CheckComputeDtype(options.dtype));
  ASSIGN_OR_RETURN(torch::Device device, ParseDevice(options.device));
  if (!IsDirectory(dir)) {
    return Status::NotFound("model folder '" + dir + "' does not exist");
  }
  const std::string config_path = JoinPath(dir, kConfigFile);
  ASSIGN_OR_RETURN(std::string config_text,
                   ReadFileToString(config_path, kMaxConfigFileBytes));
  ASSIGN_OR_RETURN(LlamaConfig config, ParseHfConfig(config_text, config_path));

  std::vector<std::string> shard_paths;
  std::map<std::string, std::string> weight_map;
  RETURN_IF_ERROR(FindShards(dir, &shard_paths, &weight_map));

  // Map and validate every header before allocating any tensor.
  std::vector<std::shared_ptr<MappedFile>> files;
  std::vector<SafetensorsHeader> headers;
  for (const std::string& path : shard_paths) {
    ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
    ASSIGN_OR_RETURN(SafetensorsHeader header,
                     ParseSafetensorsHeader(file->bytes(), path));
    files.push_back(std::move(file));
    headers.push_back(std::move(header));
  }
  std::map<std::string, Located> found;
  for (size_t s = 0; s < headers.size(); ++s) {
    for (const SafetensorsEntry& e : headers[s].entries) {
      auto [it, inserted] = found.emplace(e.name, Located{&e, s});
      if (!inserted) {
        return Status::Corruption("tensor '" + e.name + "' appears in both " +
                                  shard_paths[it->second.shard] + " and " +
                                  shard_paths[s]);
      }
    }
  }
  // Every layer is at least two norms and the seven projections: a layer
  // count the shards cannot hold is refused before anything is sized from
  // it (the expected shapes below are built per layer).
  constexpr int64_t kTensorsPerLayer = 2 + internal::kNumProjections;
  if (config.n_layers > static_cast<int64_t>(found.size()) / kTensorsPerLayer) {
    return Status::InvalidArgument(
        config_path + ": num_hidden_layers is " +
        std::to_string(config.n_layers) + ", but the weights hold " +
        std::to_string(found.size()) + " tensors, fewer than the " +
        std::to_string(kTensorsPerLayer) +
        " per layer that needs (maybe wrong base model?)");
  }
  for (const auto& [name, shard] : weight_map) {
    auto it = found.find(name);
    if (it == found.end() || shard_paths[it->second.shard] != shard) {
      return Status::Corruption(JoinPath(dir, kIndexFile) + ": tensor '" +
                                name + "' is mapped to " + shard +
                                ", which does not hold it");
    }
  }

  const auto expected = ExpectedTensorShapes(config);
  std::vector<std::string> errors;
  for (const auto& [name, shape] : expected) {
    auto it = found.find(name);
    if (it == found.end()) {
      errors.push_back("tensor '" + name + "' is missing (expected shape " +
                       ShapeString(shape) + ")");
      continue;
    }
    const SafetensorsEntry& e = *it->second.entry;
    if (e.shape != shape) {
      errors.push_back("tensor '" + name + "' has shape " +
                       ShapeString(e.shape) + ", expected " +
                       ShapeString(shape));
    }
    if (e.dtype != "F32" && e.dtype != "F16" && e.dtype != "BF16" &&
        e.dtype != "F64") {
      errors.push_back("tensor '" + name + "' has dtype " + e.dtype +
                       ", expected F32, F16 or BF16");
    }
  }
  for (const auto& [name, where] : found) {
    if (expected.count(name) != 0) continue;
    // Harmless leftovers of older transformers versions and of tied heads.
    if (EndsWith(name, ".rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && config.tie_embeddings) continue;
    errors.push_back("unexpected tensor '" + name + "' (shape " +
                     ShapeString(where.entry->shape) + ")");
  }
  if (!errors.empty()) {
    return Status::InvalidArgument(dir + ": " + JoinErrors(errors) +
                                   " (maybe wrong base model?)");
  }

  RETURN_IF_ERROR(options.span.Validate(config.n_layers).WithContext(dir));
  const LayerSpan span{options.span.begin, options.span.End(config.n_layers),
                       options.span.io};
  const auto held = ExpectedTensorShapes(config, span);
  auto weights = std::make_shared<LlamaWeights>();
  weights->config = config;
  weights->source = dir;
  weights->span = span;
  weights->compute_dtype = options.dtype;
  weights->stored_dtype =
      found.at(internal::ProjectionKey(0, internal::kQ)).entry->torch_dtype;
  if (weights->stored_dtype == torch::kFloat64) {
    weights->stored_dtype = torch::kFloat32;
  }
  const BaseDtype base = options.base_dtype.value_or(
      options.dtype == torch::kBFloat16  ? BaseDtype::kBFloat16
      : options.dtype == torch::kFloat16 ? BaseDtype::kFloat16
                                         : BaseDtype::kFloat32);
  weights->base_dtype = base;
  const bool plain = BaseIsPlain(base, options.dtype);
  try {
    torch::NoGradGuard no_grad;
    // Copies a tensor out of its shard, then drops the shard's pages of it:
    // peak memory is the loaded weights, not the weights plus the files.
    // The big matrices of a frozen base stay in their stored dtype here
    // and are converted one layer at a time below.
    auto read = [&](const std::string& name, bool to_compute) {
      const Located& where = found.at(name);
      const SafetensorsEntry& e = *where.entry;
      torch::Tensor t = CopySafetensorsEntry(files[where.shard]->bytes(),
                                             headers[where.shard], e);
      const uint64_t data = headers[where.shard].data_start;
      files[where.shard]->Release(data + e.begin, data + e.end);
      weights->tensors[name] =
          to_compute ? t.to(device, options.dtype) : t.to(device);
    };
    // A frozen matrix already in its dense dtype stays in the file's pages
    // (LoadOptions::map_weights): a tensor over the mapping, which it keeps
    // alive. False (then it is copied) for another dtype or a misaligned
    // offset.
    const bool may_map =
        options.map_weights && !plain && !IsQuantized(base) && device.is_cpu();
    auto map = [&](const std::string& name) {
      if (!may_map) return false;
      const Located& where = found.at(name);
      const SafetensorsEntry& e = *where.entry;
      const char* p = files[where.shard]->bytes().data() +
                      headers[where.shard].data_start + e.begin;
      if (e.torch_dtype != DenseStorageDtype(base) ||
          reinterpret_cast<uintptr_t>(p) % c10::elementSize(e.torch_dtype) !=
              0) {
        return false;
      }
      std::shared_ptr<MappedFile> file = files[where.shard];
      weights->tensors[name] = torch::from_blob(
          const_cast<char*>(p), e.shape, [file](void*) {},
          torch::TensorOptions().dtype(e.torch_dtype));
      weights->mapped_bytes += static_cast<int64_t>(e.end - e.begin);
      return true;
    };
    std::set<std::string> big;
    if (!plain) {
      big.insert("model.embed_tokens.weight");
      if (!config.tie_embeddings) big.insert("lm_head.weight");
      for (int64_t l = 0; l < config.n_layers; ++l) {
        for (int p = 0; p < internal::kNumProjections; ++p) {
          big.insert(internal::ProjectionKey(l, p));
        }
      }
    }
    for (const auto& [name, shape] : held) {
      if (big.count(name) == 0) read(name, true);
    }
    if (!plain) {
      if (span.io) {
        std::vector<std::string> names = {"model.embed_tokens.weight"};
        if (!config.tie_embeddings) names.push_back("lm_head.weight");
        for (const std::string& name : names) {
          if (!map(name)) read(name, false);
        }
        internal::FreezeEmbeddings(weights.get(), base);
      }
      for (int64_t l = span.begin; l < span.end; ++l) {
        bool in_place = true;
        for (int p = 0; p < internal::kNumProjections; ++p) {
          const std::string key = internal::ProjectionKey(l, p);
          if (!map(key)) {
            read(key, false);
            in_place = false;
          }
        }
        internal::FreezeLayer(weights.get(), l, base, in_place);
      }
    }
  } catch (const std::exception& e) {
    return Status::Internal(dir + ": while reading tensors: " + e.what());
  }
  // Unmap before packing, which copies q/k/v and gate/up; a file whose
  // pages hold weights (map_weights) stays mapped by those tensors.
  files.clear();
  RETURN_IF_ERROR(weights->Validate());
  if (plain) PackProjections(weights.get());
  FP_LOG_INFO("model",
              "loaded {} (HF, {} shard(s)){}: {} layers, dim {}, {} heads / "
              "{} kv, vocab {}, {} parameters, compute {}, base {} ({:.1f} "
              "MiB)",
              dir, shard_paths.size(),
              span.Whole(config.n_layers)
                  ? std::string()
                  : ", holding " + span.Describe(config.n_layers),
              config.n_layers, config.dim, config.n_heads, config.n_kv_heads,
              config.vocab_size, config.NumParameters(),
              c10::toString(options.dtype), BaseDtypeName(base),
              static_cast<double>(weights->nbytes()) / (1 << 20));
  return std::shared_ptr<const LlamaWeights>(std::move(weights));
}

StatusOr<std::shared_ptr<const LlamaWeights>> LoadLlama2cModel(
    const std::string& path, const LoadOptions& options) {
  RETURN_IF_ERROR(CheckComputeDtype(options.dtype));
  ASSIGN_OR_RETURN(torch::Device device, ParseDevice(options.device));
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  const std::string_view bytes = file->bytes();
  constexpr size_t kHeaderBytes = 7 * sizeof(int32_t);
  if (bytes.size() < kHeaderBytes) {
    return Status::Corruption(path + ": file is " +
                              std::to_string(bytes.size()) +
                              " bytes, shorter than the 28-byte llama2.c "
                              "header; truncated or not a llama2.c "
                              "checkpoint?");
  }
  int32_t h[7];
  std::memcpy(h, bytes.data(), kHeaderBytes);
  LlamaConfig c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.vocab_size = h[5] < 0 ? -static_cast<int64_t>(h[5]) : h[5];
  c.tie_embeddings = h[5] > 0;
  c.max_seq_len = h[6];
  c.norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.bos_id = 1;
  c.eos_id = 2;
  Status valid = c.Validate();
  if (!valid.ok()) {
    return Status::Corruption(
        path + ": header (dim " + std::to_string(h[0]) + ", hidden " +
        std::to_string(h[1]) + ", layers " + std::to_string(h[2]) + ", heads " +
        std::to_string(h[3]) + ", kv heads " + std::to_string(h[4]) +
        ", vocab " + std::to_string(h[5]) + ", seq " + std::to_string(h[6]) +
        ") is invalid: " + valid.message() + "; not a llama2.c checkpoint?");
  }

  // Every field is a positive int32, so 128-bit arithmetic cannot overflow.
  using U128 = unsigned __int128;
  const U128 D = c.dim, Hd = c.hidden_dim, L = c.n_layers, V = c.vocab_size,
             KVD = c.kv_dim(), S = c.max_seq_len, hd = c.head_dim();
  const U128 floats = V * D + L * D + L * D * D + 2 * L * KVD * D + L * D * D +
                      L * D + 3 * L * Hd * D + D + S * hd +
                      (c.tie_embeddings ? 0 : V * D);
  const U128 expected = kHeaderBytes + 4 * floats;
  if (expected != bytes.size()) {
    const bool huge = expected > U128(~uint64_t{0});
    return Status::Corruption(
        path + ": file is " + std::to_string(bytes.size()) +
        " bytes, expected " +
        (huge ? std::string("more than 2^64")
              : std::to_string(static_cast<uint64_t>(expected))) +
        " for its header (dim " + std::to_string(c.dim) + ", hidden " +
        std::to_string(c.hidden_dim) + ", layers " +
        std::to_string(c.n_layers) + ", heads " + std::to_string(c.n_heads) +
        ", kv heads " + std::to_string(c.n_kv_heads) + ", vocab " +
        std::to_string(h[5]) + ", seq " + std::to_string(c.max_seq_len) +
        "); truncated or not a llama2.c checkpoint?");
  }

  auto weights = std::make_shared<LlamaWeights>();
  weights->config = c;
  weights->source = path;
  try {
    torch::NoGradGuard no_grad;
    const char* p = bytes.data() + kHeaderBytes;
    // Next block of floats as a tensor that owns its memory.
    auto take = [&p](std::vector<int64_t> shape) {
      torch::Tensor t =
          torch::from_blob(const_cast<char*>(p), shape, torch::kFloat32)
              .clone();
      p += t.numel() * sizeof(float);
      return t;
    };
    auto put = [&](const std::string& name, const torch::Tensor& t) {
      weights->tensors[name] = t.to(device, options.dtype);
    };
    const int64_t nl = c.n_layers, dim = c.dim, hid = c.hidden_dim,
                  kvd = c.kv_dim();
    auto layer_key = [](int64_t l, const std::string& rest) {
      return "model.layers." + std::to_string(l) + "." + rest;
    };
    put("model.embed_tokens.weight", take({c.vocab_size, dim}));
    torch::Tensor rms_att = take({nl, dim});
    torch::Tensor wq = take({nl, dim, dim});
    torch::Tensor wk = take({nl, kvd, dim});
    torch::Tensor wv = take({nl, kvd, dim});
    torch::Tensor wo = take({nl, dim, dim});
    torch::Tensor rms_ffn = take({nl, dim});
    torch::Tensor w1 = take({nl, hid, dim});
    torch::Tensor w2 = take({nl, dim, hid});
    torch::Tensor w3 = take({nl, hid, dim});
    put("model.norm.weight", take({dim}));
    p += static_cast<size_t>(c.max_seq_len * c.head_dim()) * sizeof(float);
    if (!c.tie_embeddings) put("lm_head.weight", take({c.vocab_size, dim}));
    for (int64_t l = 0; l < nl; ++l) {
      put(layer_key(l, "input_layernorm.weight"), rms_att[l].clone());
      put(layer_key(l, "self_attn.q_proj.weight"),
          PermuteInterleavedToHalves(wq[l], c.n_heads));
      put(layer_key(l, "self_attn.k_proj.weight"),
          PermuteInterleavedToHalves(wk[l], c.n_kv_heads));
      put(layer_key(l, "self_attn.v_proj.weight"), wv[l].clone());
      put(layer_key(l, "self_attn.o_proj.weight"), wo[l].clone());
      put(layer_key(l, "post_attention_layernorm.weight"), rms_ffn[l].clone());
      put(layer_key(l, "mlp.gate_proj.weight"), w1[l].clone());
      put(layer_key(l, "mlp.down_proj.weight"), w2[l].clone());
      put(layer_key(l, "mlp.up_proj.weight"), w3[l].clone());
    }
  } catch (const std::exception& e) {
    return Status::Internal(path + ": while reading tensors: " + e.what());
  }
  weights->compute_dtype = options.dtype;
  RETURN_IF_ERROR(weights->Validate());
  PackProjections(weights.get());
  // llama2.c checkpoints are small: frozen after a whole float32 load.
  if (options.base_dtype) FreezeWeights(weights.get(), *options.base_dtype);
  RETURN_IF_ERROR(weights->Validate());
  FP_LOG_INFO("model",
              "loaded {} (llama2.c): {} layers, dim {}, {} heads / {} kv, "
              "vocab {}, {} parameters",
              path, c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.vocab_size,
              c.NumParameters());
  return std::shared_ptr<const LlamaWeights>(std::move(weights));
}

Status SaveHfModel(const LlamaWeights& weights, const std::string& dir,
                   torch::Dtype dtype) {
  if (dtype != torch::kFloat32 && dtype != torch::kBFloat16 &&
      dtype != torch::kFloat16) {
    return Status::InvalidArgument(std::string("saving ") + dir + ": dtype " +
                                   c10::toString(dtype) +
                                   ", expected Float, BFloat16 or Half");
  }
  RETURN_IF_ERROR(weights.Validate());
  RETURN_IF_ERROR(EnsureDirectory(dir));
  TensorMap tensors;
  try {
    torch::NoGradGuard no_grad;
    for (const auto& [name, shape] : ExpectedTensorShapes(weights.config)) {
      tensors[name] = weights.Materialize(name).to(torch::kCPU, dtype);
    }
  } catch (const std::exception& e) {
    return Status::Internal("saving " + dir + ": " + e.what());
  }
  RETURN_IF_ERROR(WriteSafetensors(JoinPath(dir, kWeightsFile), tensors,
                                   {{"format", "pt"}}));
  nlohmann::json config = weights.config.ToHfJson();
  config["torch_dtype"] = dtype == torch::kBFloat16  ? "bfloat16"
                          : dtype == torch::kFloat16 ? "float16"
                                                     : "float32";
  RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(dir, kConfigFile), config.dump(2) + "\n"));
  FP_LOG_INFO("model", "saved {} tensors to {}", tensors.size(), dir);
  return Status::Ok();
}

}  // namespace model
}  // namespace fedpeft
