// LoadGgufModel (model/loader.h): a GGUF file of architecture llama, qwen2
// or qwen3 with F32/F16/Q8_0 tensors, as model/gguf_export.h writes it and
// llama.cpp's converter does, back into our Hugging Face layout.
#include <set>

#include "common/logging.h"
#include "model/gguf_export.h"
#include "model/gguf_reader.h"
#include "model/loader.h"
#include "model/safetensors.h"

namespace fedpeft {
namespace model {
namespace {

std::string GgufShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return s + "]";
}

// The config the metadata of `gguf` describes; Corruption naming the key.
StatusOr<LlamaConfig> GgufConfig(const GgufReader& gguf) {
  const std::string& src = gguf.source();
  ASSIGN_OR_RETURN(std::string arch, gguf.GetString("general.architecture"));
  if (arch != "llama" && arch != "qwen2" && arch != "qwen3") {
    return Status::Unimplemented(src + ": general.architecture '" + arch +
                                 "' is not supported (llama, qwen2, qwen3)");
  }
  const std::string a = arch + ".";
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  LlamaConfig c;
  c.model_type = arch;
  ASSIGN_OR_RETURN(c.dim, gguf.GetInt(a + "embedding_length", 1, kMaxDim));
  ASSIGN_OR_RETURN(c.hidden_dim,
                   gguf.GetInt(a + "feed_forward_length", 1, kMaxDim));
  ASSIGN_OR_RETURN(c.n_layers, gguf.GetInt(a + "block_count", 1, 1 << 16));
  ASSIGN_OR_RETURN(c.n_heads,
                   gguf.GetInt(a + "attention.head_count", 1, 1 << 16));
  c.n_kv_heads = c.n_heads;
  if (gguf.metadata().count(a + "attention.head_count_kv")) {
    ASSIGN_OR_RETURN(c.n_kv_heads,
                     gguf.GetInt(a + "attention.head_count_kv", 1, 1 << 16));
  }
  ASSIGN_OR_RETURN(c.max_seq_len,
                   gguf.GetInt(a + "context_length", 1, kMaxModelSeqLen));
  ASSIGN_OR_RETURN(c.norm_eps,
                   gguf.GetFloat(a + "attention.layer_norm_rms_epsilon"));
  if (gguf.metadata().count(a + "rope.freq_base")) {
    ASSIGN_OR_RETURN(c.rope_theta, gguf.GetFloat(a + "rope.freq_base"));
  }
  if (gguf.metadata().count(a + "attention.key_length")) {
    ASSIGN_OR_RETURN(int64_t head_dim,
                     gguf.GetInt(a + "attention.key_length", 1, kMaxDim));
    if (head_dim != c.dim / c.n_heads || c.dim % c.n_heads != 0) {
      c.explicit_head_dim = head_dim;
    }
  }
  if (gguf.metadata().count(a + "rope.dimension_count")) {
    ASSIGN_OR_RETURN(int64_t rot,
                     gguf.GetInt(a + "rope.dimension_count", 1, kMaxDim));
    if (rot != c.head_dim()) {
      return Status::Unimplemented(
          src + ": " + a + "rope.dimension_count is " + std::to_string(rot) +
          ", head_dim is " + std::to_string(c.head_dim()) +
          ": partial rotary embeddings are not supported");
    }
  }
  if (gguf.metadata().count(a + "rope.scaling.type")) {
    ASSIGN_OR_RETURN(std::string scaling,
                     gguf.GetString(a + "rope.scaling.type"));
    if (scaling != "none") {
      return Status::Unimplemented(src + ": " + a + "rope.scaling.type '" +
                                   scaling + "' is not supported");
    }
  }
  const GgufTensorInfo* embd = gguf.FindTensor("token_embd.weight");
  if (embd == nullptr || embd->ne.size() != 2) {
    return Status::Corruption(src + ": tensor 'token_embd.weight' is " +
                              (embd ? "not 2-D" : "missing") +
                              ", expected [vocab, embedding_length]");
  }
  c.vocab_size = embd->ne[1];
  c.tie_embeddings = gguf.FindTensor("output.weight") == nullptr;
  c.qkv_bias = gguf.FindTensor("blk.0.attn_q.bias") != nullptr;
  c.qk_norm = gguf.FindTensor("blk.0.attn_q_norm.weight") != nullptr;
  if (gguf.metadata().count("tokenizer.ggml.bos_token_id")) {
    ASSIGN_OR_RETURN(c.bos_id, gguf.GetInt("tokenizer.ggml.bos_token_id", 0,
                                           c.vocab_size - 1));
  }
  if (gguf.metadata().count("tokenizer.ggml.eos_token_id")) {
    ASSIGN_OR_RETURN(c.eos_id, gguf.GetInt("tokenizer.ggml.eos_token_id", 0,
                                           c.vocab_size - 1));
  }
  Status valid = c.Validate();
  if (!valid.ok()) {
    return Status::Corruption(src +
                              ": the metadata describe an invalid "
                              "model: " +
                              valid.message());
  }
  // Two norms and seven projections per layer: a block_count the tensors
  // cannot hold is refused before anything is sized from it.
  if (c.n_layers > static_cast<int64_t>(gguf.tensors().size()) / 9) {
    return Status::Corruption(
        src + ": " + a + "block_count is " + std::to_string(c.n_layers) +
        ", but the file holds " + std::to_string(gguf.tensors().size()) +
        " tensors, fewer than the 9 per layer that needs");
  }
  return c;
}

}  // namespace

StatusOr<std::shared_ptr<const LlamaWeights>> LoadGgufModel(
    const std::string& path, const LoadOptions& options) {
  if (options.dtype != torch::kFloat32 && options.dtype != torch::kBFloat16 &&
      options.dtype != torch::kFloat16) {
    return Status::InvalidArgument(
        "compute dtype must be float32, bfloat16 "
        "or float16");
  }
  ASSIGN_OR_RETURN(torch::Device device, ParseDevice(options.device));
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  ASSIGN_OR_RETURN(GgufReader gguf, GgufReader::Parse(file->bytes(), path));
  ASSIGN_OR_RETURN(LlamaConfig c, GgufConfig(gguf));
  ASSIGN_OR_RETURN(std::string arch, GgufArchitecture(c));

  // Every tensor the config implies, with its shape and a readable type,
  // before anything is read; nothing else in the file.
  const auto expected = ExpectedTensorShapes(c);
  std::vector<std::string> errors;
  std::set<std::string> wanted;
  std::vector<std::pair<std::string, const GgufTensorInfo*>> plan;
  for (const auto& [hf, shape] : expected) {
    const std::string name = GgufTensorName(hf);
    wanted.insert(name);
    const GgufTensorInfo* t = gguf.FindTensor(name);
    if (t == nullptr) {
      errors.push_back("tensor '" + name + "' is missing (expected shape " +
                       GgufShapeText(shape) + " in torch order)");
      continue;
    }
    if (t->Shape() != shape) {
      errors.push_back("tensor '" + name + "' has shape " +
                       GgufShapeText(t->Shape()) + ", expected " +
                       GgufShapeText(shape) + " (maybe wrong metadata?)");
    }
    if (t->type != 0 && t->type != 1 && t->type != 8) {
      errors.push_back("tensor '" + name + "' has ggml type " +
                       std::to_string(t->type) +
                       ", expected F32 (0), F16 (1) or Q8_0 (8)");
    }
    plan.emplace_back(hf, t);
  }
  for (const GgufTensorInfo& t : gguf.tensors()) {
    if (wanted.count(t.name) == 0) {
      errors.push_back("tensor '" + t.name + "' is not part of a " + arch +
                       " model with this metadata");
    }
  }
  if (!errors.empty()) {
    std::string msg = path + ": ";
    for (size_t i = 0; i < errors.size() && i < 12; ++i) {
      msg += (i ? "; " : "") + errors[i];
    }
    if (errors.size() > 12) {
      msg += "; and " + std::to_string(errors.size() - 12) + " more";
    }
    return Status::Corruption(msg);
  }

  auto weights = std::make_shared<LlamaWeights>();
  weights->config = c;
  weights->source = path;
  try {
    torch::NoGradGuard no_grad;
    for (const auto& [hf, info] : plan) {
      ASSIGN_OR_RETURN(torch::Tensor t, gguf.ReadTensor(*info));
      // Back from llama.cpp's rope row order into ours (rotate-half).
      std::string projection;
      if (hf.find(".q_proj.") != std::string::npos) projection = "q";
      if (hf.find(".k_proj.") != std::string::npos) projection = "k";
      if (arch == "llama" && !projection.empty()) {
        t = PermuteInterleavedToHalves(
            t, projection == "q" ? c.n_heads : c.n_kv_heads);
      }
      weights->tensors[hf] = t.to(device, options.dtype).contiguous();
    }
  } catch (const std::exception& e) {
    return Status::Internal(path + ": while reading tensors: " + e.what());
  }
  weights->compute_dtype = options.dtype;
  // What `export --merge` writes back: F16 for an F16 file, else F32.
  const GgufTensorInfo* q0 = gguf.FindTensor("blk.0.attn_q.weight");
  weights->stored_dtype = q0->type == 1 ? torch::kFloat16 : torch::kFloat32;
  file.reset();
  RETURN_IF_ERROR(weights->Validate());
  PackProjections(weights.get());
  if (options.base_dtype) FreezeWeights(weights.get(), *options.base_dtype);
  RETURN_IF_ERROR(weights->Validate());
  FP_LOG_INFO("model",
              "loaded {} (GGUF {}): {} layers, dim {}, {} heads / {} kv, "
              "vocab {}, {} parameters",
              path, arch, c.n_layers, c.dim, c.n_heads, c.n_kv_heads,
              c.vocab_size, c.NumParameters());
  return std::shared_ptr<const LlamaWeights>(std::move(weights));
}

}  // namespace model
}  // namespace fedpeft
