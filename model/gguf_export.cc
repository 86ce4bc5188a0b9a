#include "model/gguf_export.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "common/file_util.h"
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

// A Hugging Face byte-level BPE tokenizer.json (Qwen2/Qwen3) as
// tokenizer.ggml.model "gpt2": every id below vocab_size with its token
// (ids the file does not use become "[PAD<id>]", unused), types (added
// special tokens control, other added tokens user-defined), the merges, the
// special ids our tokenizer resolves (tokenizer_config.json beside), and
// llama.cpp's pre-tokenizer name for the family.
Status GgufWriteHfBpe(const std::string& path, const LlamaConfig& c,
                      GgufWriter* w) {
  if (c.model_type != "qwen2" && c.model_type != "qwen3") {
    return Status::Unimplemented(
        "GGUF export: a tokenizer.json is supported for qwen2/qwen3 models "
        "only (llama.cpp's pre-tokenizer 'qwen2'); this model is '" +
        c.model_type + "'");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, LoadTokenizer(path));
  ASSIGN_OR_RETURN(std::string text,
                   ReadFileToString(path, kMaxTokenizerFileBytes));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument("tokenizer '" + path + "': " + e.what());
  }
  const nlohmann::json& model = j["model"];
  if (!model.is_object() || model.value("type", "") != "BPE" ||
      !model["vocab"].is_object() || !model["merges"].is_array()) {
    return Status::Unimplemented("tokenizer '" + path +
                                 "': only a BPE model with vocab and merges "
                                 "can be written to GGUF");
  }
  const int64_t n = c.vocab_size;
  std::vector<std::string> tokens(n);
  std::vector<int32_t> types(n, 5);  // unused until seen
  auto put = [&](const std::string& token, int64_t id, int32_t type) {
    if (id < 0 || id >= n) {
      return Status::InvalidArgument(
          "tokenizer '" + path + "': token '" + token + "' has id " +
          std::to_string(id) + ", outside the model's vocab_size " +
          std::to_string(n) + " (maybe the wrong tokenizer?)");
    }
    tokens[id] = token;
    types[id] = type;
    return Status::Ok();
  };
  try {
    for (const auto& [token, id] : model["vocab"].items()) {
      RETURN_IF_ERROR(put(token, id.get<int64_t>(), 1));
    }
    for (const nlohmann::json& added :
         j.value("added_tokens", nlohmann::json::array())) {
      RETURN_IF_ERROR(put(added.at("content").get<std::string>(),
                          added.at("id").get<int64_t>(),
                          added.value("special", false) ? 3 : 4));
    }
    std::vector<std::string> merges;
    for (const nlohmann::json& m : model["merges"]) {
      merges.push_back(m.is_string() ? m.get<std::string>()
                                     : m.at(0).get<std::string>() + " " +
                                           m.at(1).get<std::string>());
    }
    w->SetStringArray("tokenizer.ggml.merges", merges);
  } catch (const nlohmann::json::exception& e) {
    return Status::InvalidArgument("tokenizer '" + path + "': " + e.what());
  }
  for (int64_t id = 0; id < n; ++id) {
    if (types[id] == 5) tokens[id] = "[PAD" + std::to_string(id) + "]";
  }
  w->SetString("tokenizer.ggml.model", "gpt2");
  w->SetString("tokenizer.ggml.pre", "qwen2");
  w->SetStringArray("tokenizer.ggml.tokens", tokens);
  w->SetInt32Array("tokenizer.ggml.token_type", types);
  if (tok->bos_id() >= 0) {
    w->SetUint32("tokenizer.ggml.bos_token_id",
                 static_cast<uint32_t>(tok->bos_id()));
  }
  if (tok->eos_id() >= 0) {
    w->SetUint32("tokenizer.ggml.eos_token_id",
                 static_cast<uint32_t>(tok->eos_id()));
  }
  if (tok->pad_id() >= 0) {
    w->SetUint32("tokenizer.ggml.padding_token_id",
                 static_cast<uint32_t>(tok->pad_id()));
  }
  // BOS only where our Encode (the tokenizer's post-processor) adds it.
  const std::vector<int64_t> ids = tok->Encode("a", true);
  w->SetBool("tokenizer.ggml.add_bos_token",
             tok->bos_id() >= 0 && !ids.empty() && ids[0] == tok->bos_id());
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
  const std::string& tok = options.tokenizer_path;
  if (tok.size() >= 5 && tok.compare(tok.size() - 5, 5, ".json") == 0) {
    RETURN_IF_ERROR(GgufWriteHfBpe(tok, c, &w));
  } else if (!tok.empty()) {
    RETURN_IF_ERROR(GgufWriteSentencePiece(tok, c.vocab_size, &w));
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
