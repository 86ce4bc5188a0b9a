#include "model/gguf_export.h"

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "model/loader.h"
#include "model/tokenizer.h"

namespace fedpeft {
namespace model {
namespace {

// general.file_type (llama_ftype) of a file whose matrices are `type`.
uint32_t GgufFileType(GgufTensorType type) {
  switch (type) {
    case GgufTensorType::kF32:
      return 0;  // LLAMA_FTYPE_ALL_F32
    case GgufTensorType::kF16:
      return 1;  // LLAMA_FTYPE_MOSTLY_F16
    case GgufTensorType::kQ8_0:
      return 7;  // LLAMA_FTYPE_MOSTLY_Q8_0
  }
  return 0;
}

bool GgufStartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// The HF projection ("q_proj") a tensor name belongs to, "" for others.
std::string GgufProjectionOf(const std::string& hf_name) {
  for (const std::string& p : ProjectionNames()) {
    if (hf_name.find("." + p + ".") != std::string::npos) return p;
  }
  return "";
}

void GgufWriteArchitecture(const LlamaConfig& c, const std::string& arch,
                           GgufWriter* w) {
  const std::string a = arch + ".";
  w->SetUint32(a + "context_length", static_cast<uint32_t>(c.max_seq_len));
  w->SetUint32(a + "embedding_length", static_cast<uint32_t>(c.dim));
  w->SetUint32(a + "block_count", static_cast<uint32_t>(c.n_layers));
  w->SetUint32(a + "feed_forward_length", static_cast<uint32_t>(c.hidden_dim));
  w->SetUint32(a + "attention.head_count", static_cast<uint32_t>(c.n_heads));
  w->SetUint32(a + "attention.head_count_kv",
               static_cast<uint32_t>(c.n_kv_heads));
  w->SetFloat32(a + "rope.freq_base", static_cast<float>(c.rope_theta));
  w->SetFloat32(a + "attention.layer_norm_rms_epsilon",
                static_cast<float>(c.norm_eps));
  w->SetUint32(a + "attention.key_length", static_cast<uint32_t>(c.head_dim()));
  w->SetUint32(a + "attention.value_length",
               static_cast<uint32_t>(c.head_dim()));
  w->SetUint32(a + "rope.dimension_count", static_cast<uint32_t>(c.head_dim()));
  w->SetUint32(a + "vocab_size", static_cast<uint32_t>(c.vocab_size));
}

Status GgufWriteSentencePiece(const std::string& path, int64_t vocab_size,
                              GgufWriter* w) {
  ASSIGN_OR_RETURN(SentencePieceVocab v, ReadSentencePieceVocab(path));
  if (static_cast<int64_t>(v.pieces.size()) != vocab_size) {
    return Status::InvalidArgument(
        "tokenizer '" + path + "' has " + std::to_string(v.pieces.size()) +
        " pieces, the model's vocab_size is " + std::to_string(vocab_size) +
        ": llama.cpp needs them equal (maybe the wrong tokenizer?)");
  }
  w->SetString("tokenizer.ggml.model", "llama");
  w->SetString("tokenizer.ggml.pre", "default");
  w->SetStringArray("tokenizer.ggml.tokens", v.pieces);
  w->SetFloat32Array("tokenizer.ggml.scores", v.scores);
  w->SetInt32Array("tokenizer.ggml.token_type",
                   std::vector<int32_t>(v.types.begin(), v.types.end()));
  w->SetUint32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(v.bos_id));
  w->SetUint32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(v.eos_id));
  w->SetUint32("tokenizer.ggml.unknown_token_id",
               static_cast<uint32_t>(v.unk_id));
  w->SetBool("tokenizer.ggml.add_bos_token", true);
  w->SetBool("tokenizer.ggml.add_eos_token", false);
  w->SetBool("tokenizer.ggml.add_space_prefix", v.add_dummy_prefix);
  return Status::Ok();
}

}  // namespace

StatusOr<std::string> GgufArchitecture(const LlamaConfig& config) {
  if (!config.rope_scaling.type.empty()) {
    return Status::Unimplemented(
        "GGUF export: rope_scaling '" + config.rope_scaling.type +
        "' is not supported yet (only models without rope scaling)");
  }
  if (config.model_type == "llama" || config.model_type == "mistral") {
    return std::string("llama");
  }
  if (config.model_type == "qwen2" || config.model_type == "qwen3") {
    return config.model_type;
  }
  return Status::Unimplemented("GGUF export: model_type '" + config.model_type +
                               "' is not supported (llama, mistral, qwen2, "
                               "qwen3)");
}

std::string GgufTensorName(const std::string& hf_name) {
  static const std::map<std::string, std::string> kTop = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm", "attn_norm"},
      {"post_attention_layernorm", "ffn_norm"},
      {"self_attn.q_proj", "attn_q"},
      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},
      {"self_attn.o_proj", "attn_output"},
      {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"},
      {"mlp.gate_proj", "ffn_gate"},
      {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
  };
  auto top = kTop.find(hf_name);
  if (top != kTop.end()) return top->second;
  const std::string prefix = "model.layers.";
  if (!GgufStartsWith(hf_name, prefix)) return "";
  const size_t dot = hf_name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return "";
  const std::string layer = hf_name.substr(prefix.size(), dot - prefix.size());
  for (char ch : layer) {
    if (ch < '0' || ch > '9') return "";
  }
  const std::string rest =
      hf_name.substr(dot + 1);  // "self_attn.q_proj.weight"
  const size_t last = rest.rfind('.');
  if (last == std::string::npos) return "";
  auto it = kLayer.find(rest.substr(0, last));
  if (it == kLayer.end()) return "";
  return "blk." + layer + "." + it->second + rest.substr(last);
}

torch::Tensor GgufRowOrder(const torch::Tensor& w, const std::string& arch,
                           const std::string& projection,
                           const LlamaConfig& config) {
  if (arch != "llama") return w;
  if (projection == "q_proj") {
    return PermuteHalvesToInterleaved(w, config.n_heads);
  }
  if (projection == "k_proj") {
    return PermuteHalvesToInterleaved(w, config.n_kv_heads);
  }
  return w;
}

Status WriteGgufModel(const LlamaWeights& weights, const std::string& path,
                      const GgufModelOptions& options) {
  const LlamaConfig& c = weights.config;
  ASSIGN_OR_RETURN(std::string arch, GgufArchitecture(c));
  GgufWriter w;
  w.SetString("general.architecture", arch);
  if (!options.name.empty()) w.SetString("general.name", options.name);
  w.SetUint32("general.file_type", GgufFileType(options.type));
  if (options.type == GgufTensorType::kQ8_0) {
    w.SetUint32("general.quantization_version", 2);
  }
  GgufWriteArchitecture(c, arch, &w);
  if (!options.tokenizer_path.empty()) {
    RETURN_IF_ERROR(
        GgufWriteSentencePiece(options.tokenizer_path, c.vocab_size, &w));
  }
  // Tensors in llama.cpp's usual order: embeddings, layers, norm, output.
  std::vector<std::pair<std::string, std::string>> names;  // gguf, hf
  std::map<std::string, std::vector<int64_t>> shapes = ExpectedTensorShapes(c);
  for (const auto& [hf, shape] : shapes) {
    const std::string gguf = GgufTensorName(hf);
    if (gguf.empty()) {
      return Status::Internal("GGUF export: no llama.cpp name for '" + hf +
                              "'");
    }
    names.emplace_back(gguf, hf);
  }
  auto rank = [](const std::string& gguf) {
    if (GgufStartsWith(gguf, "token_embd")) return 0;
    if (GgufStartsWith(gguf, "blk.")) return 1;
    if (GgufStartsWith(gguf, "output_norm")) return 2;
    return 3;
  };
  std::stable_sort(names.begin(), names.end(),
                   [&rank](const auto& a, const auto& b) {
                     return rank(a.first) < rank(b.first);
                   });
  try {
    for (const auto& [gguf, hf] : names) {
      torch::Tensor t =
          GgufRowOrder(weights.Materialize(hf).to(torch::kFloat32), arch,
                       GgufProjectionOf(hf), c);
      GgufTensorType type = options.type;
      if (t.dim() == 1) {
        type = GgufTensorType::kF32;
      } else if (type == GgufTensorType::kQ8_0 &&
                 t.size(-1) % kQ8_0BlockValues != 0) {
        type = GgufTensorType::kF16;
      }
      RETURN_IF_ERROR(w.AddTensor(gguf, t, type));
    }
  } catch (const c10::Error& e) {
    return Status::Internal("GGUF export of '" + weights.source +
                            "': " + e.what_without_backtrace());
  }
  return w.Write(path);
}

}  // namespace model
}  // namespace fedpeft
