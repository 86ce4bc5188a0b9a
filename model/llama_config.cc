// LlamaConfig, LlamaWeights and the helpers around them (tensor names and
// shapes, packing, random weights); LlamaModel lives in llama.cc.
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <iterator>
#include <limits>
#include <optional>

#include "common/json_util.h"
#include "common/logging.h"
#include "common/text.h"
#include "model/llama.h"
#include "model/llama_internal.h"

namespace fedpeft {
namespace model {
namespace internal {

int ProjectionIndex(const std::string& projection) {
  const auto& names = ProjectionNames();
  for (size_t i = 0; i < names.size(); ++i) {
    if (names[i] == projection) return static_cast<int>(i);
  }
  return -1;
}

std::string LayerPrefix(int64_t layer) {
  return "model.layers." + std::to_string(layer) + ".";
}

std::string ProjectionKey(int64_t layer, int projection) {
  return LayerPrefix(layer) + ProjectionParent(ProjectionNames()[projection]) +
         "." + ProjectionNames()[projection] + ".weight";
}

std::string BiasKey(int64_t layer, int projection) {
  return LayerPrefix(layer) + "self_attn." + ProjectionNames()[projection] +
         ".bias";
}

std::string QkNormKey(int64_t layer, int projection) {
  return LayerPrefix(layer) + "self_attn." +
         (projection == kQ ? "q_norm" : "k_norm") + ".weight";
}

torch::Tensor FusedAlias(const std::vector<torch::Tensor>& parts) {
  const torch::Tensor& first = parts.front();
  int64_t rows = 0;
  const char* expected = static_cast<const char*>(first.data_ptr());
  for (const torch::Tensor& t : parts) {
    if (t.dim() != 2 || !t.is_contiguous() || t.dtype() != first.dtype() ||
        t.device() != first.device() || t.size(1) != first.size(1) ||
        !t.storage().is_alias_of(first.storage()) ||
        static_cast<const char*>(t.data_ptr()) != expected) {
      return torch::Tensor();
    }
    expected += t.nbytes();
    rows += t.size(0);
  }
  return first.as_strided({rows, first.size(1)}, {first.size(1), 1});
}

}  // namespace internal

using namespace internal;  // NOLINT(build/namespaces)

namespace {

Status RequireKey(const nlohmann::json& j, const std::string& key,
                  const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) {
    return Status::InvalidArgument(source + ": required key '" + key +
                                   "' is missing");
  }
  return Status::Ok();
}

// An integer that fits int64_t: nlohmann also stores 2^63 .. 2^64 - 1 as
// integers, which get<int64_t>() would wrap to negative values.
bool IsInt64(const nlohmann::json& v) {
  return v.is_number_integer() &&
         (!v.is_number_unsigned() ||
          v.get<uint64_t>() <=
              static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
}

// Reads an integer key; absent/null keeps `*out`.
Status ReadInt(const nlohmann::json& j, const std::string& key,
               const std::string& source, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!IsInt64(*it)) {
    return Status::InvalidArgument(source + ": key '" + key + "' is " +
                                   JsonBrief(*it) + ", expected an integer");
  }
  *out = it->get<int64_t>();
  return Status::Ok();
}

Status ReadDouble(const nlohmann::json& j, const std::string& key,
                  const std::string& source, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_number()) {
    return Status::InvalidArgument(source + ": key '" + key + "' is " +
                                   JsonBrief(*it) + ", expected a number");
  }
  *out = it->get<double>();
  return Status::Ok();
}

Status ReadBool(const nlohmann::json& j, const std::string& key,
                const std::string& source, bool* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_boolean()) {
    return Status::InvalidArgument(source + ": key '" + key + "' is " +
                                   JsonBrief(*it) + ", expected true or false");
  }
  *out = it->get<bool>();
  return Status::Ok();
}

// bos/eos ids: an integer, a list of integers (the first is used) or null
// (-1: none).
Status ReadTokenId(const nlohmann::json& j, const std::string& key,
                   const std::string& source, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end()) return Status::Ok();
  if (it->is_null()) {
    *out = -1;
    return Status::Ok();
  }
  const nlohmann::json* v = &*it;
  if (v->is_array() && !v->empty()) v = &(*v)[0];
  if (!IsInt64(*v)) {
    return Status::InvalidArgument(source + ": key '" + key + "' is " +
                                   JsonBrief(*it) +
                                   ", expected a token id or a list of them");
  }
  *out = v->get<int64_t>();
  return Status::Ok();
}

}  // namespace

// ---------------------------------------------------------------------------
// LlamaConfig

Status LlamaConfig::Validate() const {
  std::vector<std::string> errors;
  auto positive = [&errors](const char* field, int64_t value) {
    if (value < 1) {
      errors.push_back(std::string(field) + ": must be >= 1, got " +
                       std::to_string(value));
    }
  };
  positive("dim", dim);
  positive("hidden_dim", hidden_dim);
  positive("n_layers", n_layers);
  positive("n_heads", n_heads);
  positive("n_kv_heads", n_kv_heads);
  positive("vocab_size", vocab_size);
  positive("max_seq_len", max_seq_len);
  if (max_seq_len > kMaxModelSeqLen) {
    errors.push_back(
        "max_seq_len: must be <= " + std::to_string(kMaxModelSeqLen) +
        " (the rotary tables " + "are allocated for the whole context), got " +
        std::to_string(max_seq_len));
  }
  if (!(norm_eps > 0.0)) {
    errors.push_back("norm_eps: must be > 0, got " + std::to_string(norm_eps));
  }
  if (!(rope_theta > 0.0)) {
    errors.push_back("rope_theta: must be > 0, got " +
                     std::to_string(rope_theta));
  }
  if (explicit_head_dim < 0) {
    errors.push_back(
        "explicit_head_dim: must be >= 0 (0: dim / n_heads), got " +
        std::to_string(explicit_head_dim));
  } else if (explicit_head_dim > 0) {
    if (explicit_head_dim % 2 != 0 ||
        (rope_scaling.type == "dynamic" && explicit_head_dim <= 2)) {
      errors.push_back(
          "explicit_head_dim: must be even for rotary embeddings "
          "(and > 2 with dynamic scaling), got " +
          std::to_string(explicit_head_dim));
    }
  } else if (dim > 0 && n_heads > 0) {
    if (dim % n_heads != 0) {
      errors.push_back(
          "dim: must be a multiple of n_heads (" + std::to_string(n_heads) +
          ") unless head_dim is given, got " + std::to_string(dim));
    } else if (head_dim() % 2 != 0 ||
               (rope_scaling.type == "dynamic" && head_dim() <= 2)) {
      errors.push_back(
          "dim: head_dim = dim / n_heads must be even for "
          "rotary embeddings (and > 2 with dynamic scaling), got " +
          std::to_string(head_dim()));
    }
  }
  if (model_type != "llama" && model_type != "mistral" &&
      model_type != "qwen2" && model_type != "qwen3") {
    errors.push_back(
        "model_type: must be llama, mistral, qwen2 or qwen3, got \"" +
        model_type + "\"");
  }
  rope_scaling.Validate(&errors);
  if (n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads != 0) {
    errors.push_back("n_kv_heads: must divide n_heads (" +
                     std::to_string(n_heads) + "), got " +
                     std::to_string(n_kv_heads));
  }
  auto token = [&](const char* field, int64_t id) {
    if (id < -1 || (vocab_size > 0 && id >= vocab_size)) {
      errors.push_back(std::string(field) + ": must be -1 (none) or in [0, " +
                       std::to_string(vocab_size) + "), got " +
                       std::to_string(id));
    }
  };
  token("bos_id", bos_id);
  token("eos_id", eos_id);
  if (errors.empty()) return Status::Ok();
  std::string msg = "invalid model config: ";
  for (size_t i = 0; i < errors.size(); ++i) {
    if (i > 0) msg += "; ";
    msg += errors[i];
  }
  return Status::InvalidArgument(msg);
}

StatusOr<LlamaConfig> LlamaConfig::FromHfJson(const nlohmann::json& j,
                                              const std::string& source) {
  if (!j.is_object()) {
    return Status::InvalidArgument(source + ": expected a JSON object, got " +
                                   std::string(j.type_name()));
  }
  RETURN_IF_ERROR(RequireKey(j, "model_type", source));
  if (!j.at("model_type").is_string()) {
    return Status::InvalidArgument(source + ": key 'model_type' is " +
                                   JsonBrief(j.at("model_type")) +
                                   ", expected a string");
  }
  const std::string model_type = j.at("model_type").get<std::string>();
  if (model_type != "llama" && model_type != "mistral" &&
      model_type != "qwen2" && model_type != "qwen3") {
    std::string why = "Llama-family decoders only";
    if (model_type.rfind("gemma", 0) == 0) {
      why =
          "Gemma differs in (1 + w) norms, GeGLU, embedding scaling, logit "
          "soft-capping and sliding-window layers; not supported";
    } else if (model_type.rfind("phi3", 0) == 0) {
      why =
          "Phi-3 fuses qkv_proj and gate_up_proj and uses longrope scaling; "
          "not supported";
    }
    return Status::Unimplemented(
        source + ": key 'model_type' is \"" + model_type +
        "\", expected one of \"llama\", \"mistral\", \"qwen2\", \"qwen3\" (" +
        why + ")");
  }
  if (j.contains("hidden_act") && j.at("hidden_act") != "silu") {
    return Status::Unimplemented(source + ": key 'hidden_act' is " +
                                 JsonBrief(j.at("hidden_act")) +
                                 ", expected \"silu\" (only SwiGLU MLPs are "
                                 "supported)");
  }
  // Qwen2 always has q/k/v biases and no attention_bias key; the others
  // have none (Llama's attention_bias/mlp_bias: true is refused).
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    if (j.contains(key) && j.at(key).is_boolean() && j.at(key).get<bool>()) {
      return Status::Unimplemented(source + ": key '" + key +
                                   "' is true, expected false (biases in "
                                   "these projections are not supported)");
    }
  }

  LlamaConfig c;
  c.model_type = model_type;
  if (j.contains("rope_scaling")) {
    ASSIGN_OR_RETURN(c.rope_scaling,
                     RopeScaling::FromHfJson(j.at("rope_scaling"), source));
  }
  c.norm_eps = 1e-6;  // transformers' default for these model types
  for (const char* key :
       {"hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "vocab_size"}) {
    RETURN_IF_ERROR(RequireKey(j, key, source));
  }
  RETURN_IF_ERROR(ReadInt(j, "hidden_size", source, &c.dim));
  RETURN_IF_ERROR(ReadInt(j, "intermediate_size", source, &c.hidden_dim));
  RETURN_IF_ERROR(ReadInt(j, "num_hidden_layers", source, &c.n_layers));
  RETURN_IF_ERROR(ReadInt(j, "num_attention_heads", source, &c.n_heads));
  c.n_kv_heads = c.n_heads;
  RETURN_IF_ERROR(ReadInt(j, "num_key_value_heads", source, &c.n_kv_heads));
  RETURN_IF_ERROR(ReadInt(j, "vocab_size", source, &c.vocab_size));
  RETURN_IF_ERROR(
      ReadInt(j, "max_position_embeddings", source, &c.max_seq_len));
  RETURN_IF_ERROR(ReadDouble(j, "rms_norm_eps", source, &c.norm_eps));
  RETURN_IF_ERROR(ReadDouble(j, "rope_theta", source, &c.rope_theta));
  RETURN_IF_ERROR(
      ReadBool(j, "tie_word_embeddings", source, &c.tie_embeddings));
  RETURN_IF_ERROR(ReadTokenId(j, "bos_token_id", source, &c.bos_id));
  RETURN_IF_ERROR(ReadTokenId(j, "eos_token_id", source, &c.eos_id));
  c.qkv_bias = model_type == "qwen2";
  c.qk_norm = model_type == "qwen3";

  if (j.contains("head_dim") && !j.at("head_dim").is_null()) {
    int64_t head_dim = 0;
    RETURN_IF_ERROR(ReadInt(j, "head_dim", source, &head_dim));
    if (head_dim < 1) {
      return Status::InvalidArgument(source + ": key 'head_dim' is " +
                                     std::to_string(head_dim) +
                                     ", expected a positive even integer");
    }
    // Kept only when it differs, so configs that spell out the default
    // (Llama-3.2: 64 = 2048 / 32) export as before.
    if (c.n_heads < 1 || head_dim * c.n_heads != c.dim) {
      c.explicit_head_dim = head_dim;
    }
  }
  // A sliding window only matters beyond its length: cap the context there.
  // Exact for Qwen2/3's max_window_layers too: within the window, sliding
  // and full attention layers compute the same.
  bool sliding = model_type == "mistral";
  if (model_type == "qwen2" || model_type == "qwen3") {
    RETURN_IF_ERROR(ReadBool(j, "use_sliding_window", source, &sliding));
    int64_t max_window_layers = 0;
    RETURN_IF_ERROR(
        ReadInt(j, "max_window_layers", source, &max_window_layers));
  }
  if (sliding && j.contains("sliding_window") &&
      !j.at("sliding_window").is_null()) {
    int64_t window = 0;
    RETURN_IF_ERROR(ReadInt(j, "sliding_window", source, &window));
    if (window > 0 && window < c.max_seq_len) {
      FP_LOG_WARN("model",
                  "{}: sliding_window {} < max_position_embeddings {}; "
                  "limiting the context to {} tokens",
                  source, window, c.max_seq_len, window);
      c.max_seq_len = window;
    }
  }
  Status s = c.Validate();
  if (!s.ok()) return s.WithContext(source);
  return c;
}

int64_t LlamaConfig::context_length() const {
  if (rope_scaling.type != "dynamic") return max_seq_len;
  const double extended =
      std::floor(rope_scaling.factor * static_cast<double>(max_seq_len));
  if (!(extended < static_cast<double>(kMaxModelSeqLen))) {
    return kMaxModelSeqLen;
  }
  return std::max(max_seq_len, static_cast<int64_t>(extended));
}

nlohmann::json LlamaConfig::ToHfJson() const {
  // qkv_bias is what tells Qwen2 apart from configs built in code (the
  // model_type default is "llama").
  std::string type = qkv_bias ? "qwen2" : (qk_norm ? "qwen3" : model_type);
  if (!qkv_bias && !qk_norm && (type == "qwen2" || type == "qwen3")) {
    type = "llama";  // what reads back as these fields
  }
  static const std::map<std::string, std::string> kArchitectures = {
      {"llama", "LlamaForCausalLM"},
      {"mistral", "MistralForCausalLM"},
      {"qwen2", "Qwen2ForCausalLM"},
      {"qwen3", "Qwen3ForCausalLM"}};
  nlohmann::json j;
  auto arch = kArchitectures.find(type);
  j["architectures"] = {arch != kArchitectures.end() ? arch->second
                                                     : "LlamaForCausalLM"};
  j["model_type"] = type;
  j["hidden_size"] = dim;
  j["intermediate_size"] = hidden_dim;
  j["num_hidden_layers"] = n_layers;
  j["num_attention_heads"] = n_heads;
  j["num_key_value_heads"] = n_kv_heads;
  j["vocab_size"] = vocab_size;
  j["max_position_embeddings"] = max_seq_len;
  j["rms_norm_eps"] = norm_eps;
  j["rope_theta"] = rope_theta;
  j["rope_scaling"] = rope_scaling.ToHfJson();
  if (explicit_head_dim > 0) j["head_dim"] = explicit_head_dim;
  j["hidden_act"] = "silu";
  if (!qkv_bias) {
    j["attention_bias"] = false;
    if (type != "qwen3") j["mlp_bias"] = false;
  }
  j["tie_word_embeddings"] = tie_embeddings;
  j["bos_token_id"] = bos_id >= 0 ? nlohmann::json(bos_id) : nullptr;
  j["eos_token_id"] = eos_id >= 0 ? nlohmann::json(eos_id) : nullptr;
  j["torch_dtype"] = "float32";
  return j;
}

int64_t LlamaConfig::NumParameters() const {
  int64_t n = 0;
  for (const auto& [name, shape] : ExpectedTensorShapes(*this)) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    n += numel;
  }
  return n;
}

std::map<std::string, std::vector<int64_t>> ExpectedTensorShapes(
    const LlamaConfig& c) {
  std::map<std::string, std::vector<int64_t>> shapes;
  const int64_t kv = c.kv_dim();
  const int64_t q = c.q_dim();
  shapes["model.embed_tokens.weight"] = {c.vocab_size, c.dim};
  shapes["model.norm.weight"] = {c.dim};
  if (!c.tie_embeddings) shapes["lm_head.weight"] = {c.vocab_size, c.dim};
  const std::array<std::vector<int64_t>, kNumProjections> proj = {{
      {q, c.dim},
      {kv, c.dim},
      {kv, c.dim},
      {c.dim, q},
      {c.hidden_dim, c.dim},
      {c.hidden_dim, c.dim},
      {c.dim, c.hidden_dim},
  }};
  for (int64_t l = 0; l < c.n_layers; ++l) {
    shapes[LayerPrefix(l) + "input_layernorm.weight"] = {c.dim};
    shapes[LayerPrefix(l) + "post_attention_layernorm.weight"] = {c.dim};
    for (int p = 0; p < kNumProjections; ++p) {
      shapes[ProjectionKey(l, p)] = proj[p];
    }
    if (c.qk_norm) {
      shapes[QkNormKey(l, kQ)] = {c.head_dim()};
      shapes[QkNormKey(l, kK)] = {c.head_dim()};
    }
    if (c.qkv_bias) {
      shapes[BiasKey(l, kQ)] = {q};
      shapes[BiasKey(l, kK)] = {kv};
      shapes[BiasKey(l, kV)] = {kv};
    }
  }
  return shapes;
}

std::map<std::string, std::vector<int64_t>> ExpectedTensorShapes(
    const LlamaConfig& c, const LayerSpan& span) {
  std::map<std::string, std::vector<int64_t>> shapes = ExpectedTensorShapes(c);
  if (span.Whole(c.n_layers)) return shapes;
  for (auto it = shapes.begin(); it != shapes.end();) {
    it = span.Holds(it->first, c.n_layers) ? std::next(it) : shapes.erase(it);
  }
  return shapes;
}

namespace {

// The N of "model.layers.N.<rest>", or -1 for a name outside the layers.
int64_t LayerOfName(const std::string& name) {
  static const std::string kPrefix = "model.layers.";
  if (name.rfind(kPrefix, 0) != 0) return -1;
  int64_t layer = 0;
  size_t pos = kPrefix.size();
  const size_t digits = pos;
  while (pos < name.size() && name[pos] >= '0' && name[pos] <= '9' &&
         pos - digits < 9) {
    layer = layer * 10 + (name[pos++] - '0');
  }
  return pos == digits || pos >= name.size() || name[pos] != '.' ? -1 : layer;
}

}  // namespace

bool LayerSpan::Holds(const std::string& name, int64_t n_layers) const {
  const int64_t layer = LayerOfName(name);
  return layer < 0 ? io : HoldsLayer(layer, n_layers);
}

std::string LayerSpan::Describe(int64_t n_layers) const {
  const int64_t e = End(n_layers);
  std::string s = e > begin ? "layers " + std::to_string(begin) + "-" +
                                  std::to_string(e - 1)
                            : "no layers";
  if (io) s += " + embeddings and output layer";
  return s;
}

Status LayerSpan::Validate(int64_t n_layers) const {
  const int64_t e = End(n_layers);
  if (begin < 0 || begin > e || e > n_layers) {
    return Status::InvalidArgument(
        "layer span [" + std::to_string(begin) + ", " + std::to_string(e) +
        ") is not within the model's " + std::to_string(n_layers) + " layers");
  }
  if (begin == e && !io) {
    return Status::InvalidArgument("layer span holds nothing");
  }
  return Status::Ok();
}

void RestrictToSpan(LlamaWeights* weights, const LayerSpan& span) {
  const int64_t n = weights->config.n_layers;
  for (auto it = weights->tensors.begin(); it != weights->tensors.end();) {
    it = span.Holds(it->first, n) ? std::next(it) : weights->tensors.erase(it);
  }
  for (auto it = weights->frozen.begin(); it != weights->frozen.end();) {
    it = span.Holds(it->first, n) ? std::next(it) : weights->frozen.erase(it);
  }
  weights->span = span;
  weights->span.end = span.End(n);
}

void PackProjections(LlamaWeights* weights) {
  torch::NoGradGuard no_grad;
  auto pack = [weights](const std::vector<std::string>& names) {
    std::vector<torch::Tensor> parts;
    for (const std::string& n : names) parts.push_back(weights->Get(n));
    if (FusedAlias(parts).defined()) return;  // already packed
    torch::Tensor block = torch::cat(parts, 0);
    int64_t row = 0;
    for (size_t i = 0; i < names.size(); ++i) {
      const int64_t rows = parts[i].size(0);
      weights->tensors[names[i]] = block.narrow(0, row, rows);
      row += rows;
    }
  };
  const LayerSpan& span = weights->span;
  for (int64_t l = span.begin; l < span.End(weights->config.n_layers); ++l) {
    pack({ProjectionKey(l, kQ), ProjectionKey(l, kK), ProjectionKey(l, kV)});
    pack({ProjectionKey(l, kGate), ProjectionKey(l, kUp)});
  }
}

const std::vector<std::string>& ProjectionNames() {
  static const std::vector<std::string> kNames = {
      "q_proj",    "k_proj",  "v_proj",   "o_proj",
      "gate_proj", "up_proj", "down_proj"};
  return kNames;
}

std::string ProjectionParent(const std::string& projection) {
  int i = ProjectionIndex(projection);
  return i >= kGate ? "mlp" : "self_attn";
}

std::shared_ptr<LlamaWeights> RandomLlamaWeights(const LlamaConfig& config,
                                                 uint64_t seed) {
  auto weights = std::make_shared<LlamaWeights>();
  weights->config = config;
  weights->source = "random(seed=" + std::to_string(seed) + ")";
  at::Generator gen = at::detail::createCPUGenerator(seed);
  for (const auto& [name, shape] : ExpectedTensorShapes(config)) {
    const bool is_norm = name.size() >= 11 &&
                         name.compare(name.size() - 11, 11, "norm.weight") == 0;
    if (is_norm) {
      weights->tensors[name] = torch::ones(shape);
    } else {
      weights->tensors[name] = torch::randn(shape, gen).mul_(0.02);
    }
  }
  PackProjections(weights.get());
  return weights;
}

}  // namespace model
}  // namespace fedpeft
