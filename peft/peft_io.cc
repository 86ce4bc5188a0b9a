#include "peft/peft_io.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "common/config.h"
#include "common/file_util.h"
#include "common/json_util.h"
#include "common/text.h"
#include "model/safetensors.h"
#include "peft/bottleneck.h"

namespace fedpeft {
namespace peft {
namespace {

constexpr char kConfigFile[] = "adapter_config.json";
constexpr char kWeightsFile[] = "adapter_model.safetensors";
constexpr char kLoraType[] = "LORA";
constexpr char kBottleneckType[] = "FEDPEFT_BOTTLENECK";
constexpr char kKeyPrefix[] = "base_model.model.";

using Json = nlohmann::json;

// One parsed PEFT tensor key.
struct AdapterKey {
  int64_t layer = -1;
  std::string module;  // "q_proj".. for LoRA, "attn"/"mlp" for bottleneck
  std::string path;    // "model.layers.3.self_attn.q_proj"
  std::string part;    // "lora_A" | "lora_B" | "down.weight" | ...
};

// Parses "base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight".
bool ParseLoraKey(const std::string& key, AdapterKey* out) {
  static const std::regex kPattern(
      R"(base_model\.model\.(model\.layers\.(\d{1,6})\.(self_attn|mlp)\.(\w+))\.(lora_A|lora_B)\.weight)");
  std::smatch m;
  if (!std::regex_match(key, m, kPattern)) return false;
  const std::string projection = m[4];
  const auto& names = model::ProjectionNames();
  if (std::find(names.begin(), names.end(), projection) == names.end() ||
      model::ProjectionParent(projection) != m[3].str()) {
    return false;
  }
  out->path = m[1];
  out->layer = std::stoll(m[2]);
  out->module = projection;
  out->part = m[5];
  return true;
}

// Parses "base_model.model.model.layers.N.attn_adapter.down.weight".
bool ParseBottleneckKey(const std::string& key, AdapterKey* out) {
  static const std::regex kPattern(
      R"(base_model\.model\.(model\.layers\.(\d{1,6})\.(attn|mlp)_adapter)\.((down|up)\.(weight|bias)))");
  std::smatch m;
  if (!std::regex_match(key, m, kPattern)) return false;
  out->path = m[1];
  out->layer = std::stoll(m[2]);
  out->module = m[3];
  out->part = m[4];
  return true;
}

// lora_alpha as PEFT writes it: an int when integral (16), else a float.
Json Number(double v) {
  if (std::abs(v) < 1e15 && v == std::floor(v)) {
    return static_cast<int64_t>(v);
  }
  return v;
}

Json LayersJson(const std::vector<int>& layers) {
  return layers.empty() ? Json(nullptr) : Json(layers);
}

// Each adapted LoRA module's rank, from the shapes of its A and B; checks
// that keys parse, pairs are complete and shapes agree.
StatusOr<std::map<std::string, int>> LoraRanks(const TensorMap& tensors,
                                               const std::string& source) {
  std::map<std::string, std::map<std::string, torch::Tensor>> pairs;
  for (const auto& [key, t] : tensors) {
    AdapterKey k;
    if (!ParseLoraKey(key, &k)) {
      return Status::InvalidArgument(
          source + ": tensor '" + key +
          "' does not match the PEFT LoRA key pattern "
          "'base_model.model.model.layers.<N>.<self_attn|mlp>.<proj>."
          "lora_<A|B>.weight'");
    }
    if (!t.defined() || t.dim() != 2) {
      return Status::InvalidArgument(
          source + ": tensor '" + key + "': expected a matrix, got shape " +
          (t.defined() ? ShapeString(t.sizes()) : "undefined"));
    }
    pairs[k.path][k.part] = t;
  }
  std::map<std::string, int> ranks;
  for (const auto& [path, parts] : pairs) {
    const std::string prefix = kKeyPrefix + path;
    for (const char* part : {"lora_A", "lora_B"}) {
      if (!parts.count(part)) {
        const char* other = std::string(part) == "lora_A" ? "lora_B" : "lora_A";
        return Status::InvalidArgument(
            source + ": '" + prefix + "." + part + ".weight' is missing for '" +
            prefix + "." + other + ".weight' (A/B pairs must be complete)");
      }
    }
    const torch::Tensor& a = parts.at("lora_A");
    const torch::Tensor& b = parts.at("lora_B");
    if (a.size(0) != b.size(1) || a.size(0) < 1) {
      return Status::InvalidArgument(
          source + ": '" + prefix + "': lora_A " + ShapeString(a.sizes()) +
          " and lora_B " + ShapeString(b.sizes()) +
          " disagree on the rank (expected A [r, in], B [out, r])");
    }
    ranks[path] = static_cast<int>(a.size(0));
  }
  return ranks;
}

// The options to write for LoRA `tensors`: `options` unchanged when they
// give every module its rank, else r = the most common rank and a
// rank_pattern of full module paths for the others (so heterogeneous ranks,
// e.g. after HetLoRA aggregation, round-trip).
LoraOptions OptionsForRanks(const LoraOptions& options,
                            const std::map<std::string, int>& ranks) {
  bool agree = true;
  for (const auto& [path, r] : ranks) {
    agree = agree && RankFor(options, path) == r;
  }
  if (agree) return options;
  std::map<int, int> count;
  for (const auto& kv : ranks) ++count[kv.second];
  int common = options.r;
  int best = 0;
  for (const auto& [r, n] : count) {
    if (n > best || (n == best && r == options.r)) {
      best = n;
      common = r;
    }
  }
  LoraOptions out = options;
  out.r = common;
  out.rank_pattern.clear();
  for (const auto& [path, r] : ranks) {
    if (r != common) out.rank_pattern[path] = r;
  }
  return out;
}

Json LoraConfigJson(const LoraOptions& o, const std::string& base_model) {
  Json rank_pattern = Json::object();
  for (const auto& [k, v] : o.rank_pattern) rank_pattern[k] = v;
  Json alpha_pattern = Json::object();
  for (const auto& [k, v] : o.alpha_pattern) alpha_pattern[k] = Number(v);
  std::vector<std::string> targets;
  for (const std::string& t : o.target_modules) {
    if (std::find(targets.begin(), targets.end(), t) == targets.end()) {
      targets.push_back(t);
    }
  }
  return Json{
      {"peft_type", kLoraType},
      {"task_type", "CAUSAL_LM"},
      {"r", o.r},
      {"lora_alpha", Number(o.alpha)},
      {"lora_dropout", o.dropout},
      {"target_modules", targets},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", true},
      {"layers_to_transform", LayersJson(o.layers_to_transform)},
      {"rank_pattern", rank_pattern},
      {"alpha_pattern", alpha_pattern},
      {"use_rslora", o.use_rslora},
      {"modules_to_save", nullptr},
      {"base_model_name_or_path", base_model},
      {"revision", nullptr},
  };
}

Json BottleneckConfigJson(const BottleneckOptions& o,
                          const std::string& base_model) {
  return Json{
      {"peft_type", kBottleneckType},
      {"task_type", "CAUSAL_LM"},
      {"bottleneck_dim", o.bottleneck_dim},
      {"places", o.places},
      {"activation", o.activation},
      {"layers_to_transform", LayersJson(o.layers_to_transform)},
      {"inference_mode", true},
      {"base_model_name_or_path", base_model},
      {"revision", nullptr},
  };
}

// Checks `tensors` for a bottleneck adapter with `o`: keys, shapes
// [b, dim] / [b] / [dim, b] / [dim] (dim from the tensors themselves).
Status CheckBottleneckTensors(const BottleneckOptions& o,
                              const TensorMap& tensors,
                              const std::string& source) {
  for (const auto& [key, t] : tensors) {
    AdapterKey k;
    if (!ParseBottleneckKey(key, &k)) {
      return Status::InvalidArgument(
          source + ": tensor '" + key +
          "' does not match the bottleneck key pattern "
          "'base_model.model.model.layers.<N>.<attn|mlp>_adapter."
          "<down|up>.<weight|bias>'");
    }
    const int64_t b = o.bottleneck_dim;
    const bool ok =
        (k.part == "down.weight" && t.dim() == 2 && t.size(0) == b) ||
        (k.part == "down.bias" && t.dim() == 1 && t.size(0) == b) ||
        (k.part == "up.weight" && t.dim() == 2 && t.size(1) == b) ||
        (k.part == "up.bias" && t.dim() == 1);
    if (!ok) {
      return Status::InvalidArgument(
          source + ": tensor '" + key + "': shape " + ShapeString(t.sizes()) +
          " does not fit bottleneck_dim " + std::to_string(b) +
          " (expected down.weight [b, dim], down.bias [b], up.weight "
          "[dim, b], up.bias [dim])");
    }
  }
  return Status::Ok();
}

// Checks that every tensor's module is one the options adapt.
Status CheckModulesDeclared(const PeftOptions& options,
                            const TensorMap& tensors,
                            const std::string& source) {
  const bool lora = options.method == "lora";
  const std::vector<std::string>& modules =
      lora ? options.lora.target_modules : options.bottleneck.places;
  const std::vector<int>& layers = lora
                                       ? options.lora.layers_to_transform
                                       : options.bottleneck.layers_to_transform;
  for (const auto& kv : tensors) {
    AdapterKey k;
    if (!(lora ? ParseLoraKey(kv.first, &k)
               : ParseBottleneckKey(kv.first, &k))) {
      continue;  // reported by the shape checks
    }
    if (std::find(modules.begin(), modules.end(), k.module) == modules.end()) {
      return Status::InvalidArgument(
          source + ": tensor '" + kv.first + "' adapts '" + k.module +
          "', which the config does not list (" +
          (lora ? "target_modules: " : "places: ") + Join(modules) + ")");
    }
    if (!layers.empty() &&
        std::find(layers.begin(), layers.end(), k.layer) == layers.end()) {
      return Status::InvalidArgument(
          source + ": tensor '" + kv.first + "' is in layer " +
          std::to_string(k.layer) +
          ", which layers_to_transform does not list");
    }
  }
  return Status::Ok();
}

// Whether `v` holds a T as written, so that get<T>() neither truncates nor
// wraps: nlohmann's get<int>() takes any number and a boolean, truncates a
// float (undefined behavior beyond the int's range) and wraps a large
// integer.
bool Holds(const Json& v, const int*) {
  if (v.is_number_unsigned()) {
    return v.get<uint64_t>() <=
           static_cast<uint64_t>(std::numeric_limits<int>::max());
  }
  if (!v.is_number_integer()) return false;
  const int64_t x = v.get<int64_t>();
  return x >= std::numeric_limits<int>::min() &&
         x <= std::numeric_limits<int>::max();
}
bool Holds(const Json& v, const double*) { return v.is_number(); }
bool Holds(const Json& v, const bool*) { return v.is_boolean(); }
bool Holds(const Json& v, const std::string*) { return v.is_string(); }
template <typename T>
bool Holds(const Json& v, const std::vector<T>*) {
  if (!v.is_array()) return false;
  for (const Json& e : v) {
    if (!Holds(e, static_cast<const T*>(nullptr))) return false;
  }
  return true;
}
template <typename T>
bool Holds(const Json& v, const std::map<std::string, T>*) {
  if (!v.is_object()) return false;
  for (const Json& e : v) {
    if (!Holds(e, static_cast<const T*>(nullptr))) return false;
  }
  return true;
}

// Reads the JSON field `key` of the config in `file` into `out`.
template <typename T>
Status Field(const Json& j, const std::string& key, const std::string& file,
             const char* expected, T* out, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (!required) return Status::Ok();
    return Status::InvalidArgument(file + ": missing field '" + key +
                                   "' (expected " + expected + ")");
  }
  if (!Holds(*it, out)) {
    return Status::InvalidArgument(file + ": field '" + key + "': expected " +
                                   expected + ", got " + JsonBrief(*it));
  }
  *out = it->get<T>();
  return Status::Ok();
}

// layers_to_transform: null, an int, or a list of ints (PEFT accepts both).
Status LayersField(const Json& j, const std::string& file,
                   std::vector<int>* out) {
  auto it = j.find("layers_to_transform");
  if (it == j.end() || it->is_null()) return Status::Ok();
  int layer = 0;
  if (it->is_number()) {
    RETURN_IF_ERROR(Field(j, "layers_to_transform", file,
                          "null, an integer or a list of integers", &layer,
                          false));
    *out = {layer};
    return Status::Ok();
  }
  return Field(j, "layers_to_transform", file,
               "null, an integer or a list of integers", out, false);
}

StatusOr<PeftOptions> LoraOptionsFromJson(const Json& j,
                                          const std::string& file) {
  PeftOptions options;
  options.method = "lora";
  LoraOptions& o = options.lora;
  RETURN_IF_ERROR(Field(j, "r", file, "an integer", &o.r, true));
  if (o.r < 1) {
    return Status::InvalidArgument(file + ": field 'r': must be >= 1, got " +
                                   std::to_string(o.r));
  }
  RETURN_IF_ERROR(Field(j, "lora_alpha", file, "a number", &o.alpha, true));
  RETURN_IF_ERROR(
      Field(j, "lora_dropout", file, "a number", &o.dropout, false));
  if (j.contains("target_modules") && j["target_modules"].is_string()) {
    // PEFT also takes a regex string; only "all-linear" is supported here.
    const std::string t = j["target_modules"].get<std::string>();
    if (t != "all-linear") {
      return Status::Unimplemented(
          file + ": field 'target_modules': regex '" + t +
          "' is not supported; expected a list of some of " +
          Join(model::ProjectionNames()) + " or \"all-linear\"");
    }
    o.target_modules = model::ProjectionNames();
  } else {
    RETURN_IF_ERROR(Field(j, "target_modules", file, "a list of names",
                          &o.target_modules, true));
  }
  RETURN_IF_ERROR(LayersField(j, file, &o.layers_to_transform));
  RETURN_IF_ERROR(Field(j, "rank_pattern", file,
                        "an object of module -> integer", &o.rank_pattern,
                        false));
  RETURN_IF_ERROR(Field(j, "alpha_pattern", file,
                        "an object of module -> number", &o.alpha_pattern,
                        false));
  RETURN_IF_ERROR(
      Field(j, "use_rslora", file, "a boolean", &o.use_rslora, false));

  // Variants this implementation would silently get wrong.
  std::string bias = "none";
  RETURN_IF_ERROR(Field(j, "bias", file, "a string", &bias, false));
  if (bias != "none") {
    return Status::Unimplemented(file + ": field 'bias': got '" + bias +
                                 "', only \"none\" is supported");
  }
  bool flag = false;
  RETURN_IF_ERROR(Field(j, "use_dora", file, "a boolean", &flag, false));
  if (flag) {
    return Status::Unimplemented(file +
                                 ": field 'use_dora': DoRA is not supported");
  }
  RETURN_IF_ERROR(Field(j, "fan_in_fan_out", file, "a boolean", &flag, false));
  if (flag) {
    return Status::Unimplemented(
        file +
        ": field 'fan_in_fan_out': true is for GPT-2 Conv1D; Llama "
        "projections are [out, in], expected false");
  }
  std::vector<std::string> to_save;
  RETURN_IF_ERROR(
      Field(j, "modules_to_save", file, "null or a list", &to_save, false));
  if (!to_save.empty()) {
    return Status::Unimplemented(file + ": field 'modules_to_save': got " +
                                 Join(to_save) +
                                 ", full-module training is not supported");
  }
  return options;
}

StatusOr<PeftOptions> BottleneckOptionsFromJson(const Json& j,
                                                const std::string& file) {
  PeftOptions options;
  options.method = "bottleneck";
  BottleneckOptions& o = options.bottleneck;
  RETURN_IF_ERROR(
      Field(j, "bottleneck_dim", file, "an integer", &o.bottleneck_dim, true));
  RETURN_IF_ERROR(
      Field(j, "places", file, "a list of attn/mlp", &o.places, false));
  RETURN_IF_ERROR(
      Field(j, "activation", file, "a string", &o.activation, false));
  RETURN_IF_ERROR(LayersField(j, file, &o.layers_to_transform));
  return options;
}

// ValidatePeftOptions with the file or call named.
Status ValidateOptions(const PeftOptions& options, const std::string& file) {
  return ValidatePeftOptions(options).WithContext(file);
}

// adapter_config.json text -> options (and base_model_name_or_path).
StatusOr<PeftOptions> ParseAdapterConfig(const std::string& json_text,
                                         const std::string& source,
                                         std::string* base_model) {
  Json j;
  try {
    j = Json::parse(json_text);
  } catch (const Json::exception& e) {
    return Status::InvalidArgument(source + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) {
    return Status::InvalidArgument(source +
                                   ": expected a JSON object at top level");
  }
  std::string peft_type;
  RETURN_IF_ERROR(Field(j, "peft_type", source, "a string", &peft_type, true));
  std::string task_type;
  RETURN_IF_ERROR(Field(j, "task_type", source, "a string", &task_type, false));
  if (task_type != "CAUSAL_LM") {
    return Status::InvalidArgument(
        source + ": field 'task_type': expected \"CAUSAL_LM\", got " +
        (task_type.empty() ? "none" : "'" + task_type + "'") +
        " (fedpeft adapts causal language models)");
  }
  PeftOptions options;
  if (peft_type == kLoraType) {
    ASSIGN_OR_RETURN(options, LoraOptionsFromJson(j, source));
  } else if (peft_type == kBottleneckType) {
    ASSIGN_OR_RETURN(options, BottleneckOptionsFromJson(j, source));
  } else {
    return Status::Unimplemented(source + ": field 'peft_type': got '" +
                                 peft_type + "', expected " + kLoraType +
                                 " or " + kBottleneckType);
  }
  RETURN_IF_ERROR(ValidateOptions(options, source));
  if (base_model != nullptr) {
    RETURN_IF_ERROR(Field(j, "base_model_name_or_path", source, "a string",
                          base_model, false));
  }
  return options;
}

// The number of adapter parameters PeftModel::Create(base, options)
// allocates, computed without allocating (saturating at 2^64 - 1).
// REQUIRES: ValidatePeftOptions(options, base.config.n_layers) passed.
StatusOr<uint64_t> RequestedParameters(const PeftOptions& options,
                                       const model::LlamaWeights& base,
                                       const std::string& what) {
  using U128 = unsigned __int128;
  const model::LlamaConfig& c = base.config;
  const bool lora = options.method == "lora";
  const std::vector<int>& chosen = lora
                                       ? options.lora.layers_to_transform
                                       : options.bottleneck.layers_to_transform;
  std::vector<int64_t> layers(chosen.begin(), chosen.end());
  if (layers.empty()) {
    for (int64_t l = 0; l < c.n_layers; ++l) layers.push_back(l);
  }
  U128 total = 0;
  try {
    for (int64_t layer : layers) {
      const std::string prefix = "model.layers." + std::to_string(layer);
      if (lora) {
        for (const std::string& proj : model::ProjectionNames()) {
          const auto& targets = options.lora.target_modules;
          if (std::find(targets.begin(), targets.end(), proj) ==
              targets.end()) {
            continue;
          }
          const std::string path =
              prefix + "." + model::ProjectionParent(proj) + "." + proj;
          const std::vector<int64_t> w = base.Shape(path + ".weight");
          // A [r, in], B [out, r].
          total +=
              U128(RankFor(options.lora, path)) * (U128(w[0]) + U128(w[1]));
        }
      } else {
        const U128 b = options.bottleneck.bottleneck_dim;
        const U128 dim = c.dim;
        // down [b, dim] + [b], up [dim, b] + [dim], per place.
        total +=
            U128(options.bottleneck.places.size()) * (2 * b * dim + b + dim);
      }
    }
  } catch (const std::exception& e) {
    return Status::InvalidArgument(what + ": " + e.what() +
                                   " (maybe wrong base model?)");
  }
  const U128 max = ~uint64_t{0};
  return static_cast<uint64_t>(total > max ? max : total);
}

}  // namespace

nlohmann::json AdapterConfigToJson(const PeftOptions& options,
                                   const std::string& base_model) {
  return options.method == "bottleneck"
             ? BottleneckConfigJson(options.bottleneck, base_model)
             : LoraConfigJson(options.lora, base_model);
}

StatusOr<PeftOptions> AdapterConfigFromJson(const std::string& json_text,
                                            const std::string& source) {
  return ParseAdapterConfig(json_text, source, /*base_model=*/nullptr);
}

Status SaveAdapter(const std::string& dir, const PeftOptions& options,
                   const TensorMap& tensors, const std::string& base_model) {
  const std::string what = "SaveAdapter '" + dir + "'";
  RETURN_IF_ERROR(ValidateOptions(options, what));
  Json config;
  if (options.method == "lora") {
    ASSIGN_OR_RETURN(auto ranks, LoraRanks(tensors, what));
    config = LoraConfigJson(OptionsForRanks(options.lora, ranks), base_model);
  } else {
    RETURN_IF_ERROR(CheckBottleneckTensors(options.bottleneck, tensors, what));
    config = BottleneckConfigJson(options.bottleneck, base_model);
  }
  RETURN_IF_ERROR(CheckModulesDeclared(options, tensors, what));
  if (tensors.empty()) {
    return Status::InvalidArgument(what + ": no adapter tensors to save");
  }
  TensorMap f32;
  try {
    for (const auto& [key, t] : tensors) {
      f32[key] = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    }
  } catch (const std::exception& e) {
    return Status::Internal(what + ": converting tensors: " + e.what());
  }
  RETURN_IF_ERROR(EnsureDirectory(dir));
  RETURN_IF_ERROR(model::WriteSafetensors(JoinPath(dir, kWeightsFile), f32,
                                          {{"format", "pt"}}));
  // PEFT writes json.dumps(config, indent=2, sort_keys=True).
  return WriteFileAtomic(JoinPath(dir, kConfigFile), config.dump(2) + "\n");
}

StatusOr<SavedAdapter> LoadAdapter(const std::string& dir) {
  const std::string config_path = JoinPath(dir, kConfigFile);
  const std::string weights_path = JoinPath(dir, kWeightsFile);
  if (!PathExists(config_path)) {
    return Status::NotFound("adapter '" + dir + "': missing " + kConfigFile +
                            " (expected a Hugging Face PEFT adapter folder "
                            "with " +
                            kConfigFile + " and " + kWeightsFile + ")");
  }
  ASSIGN_OR_RETURN(std::string text,
                   ReadFileToString(config_path, kMaxConfigFileBytes));
  SavedAdapter saved;
  ASSIGN_OR_RETURN(saved.options,
                   ParseAdapterConfig(text, config_path, &saved.base_model));

  if (!PathExists(weights_path)) {
    return Status::NotFound("adapter '" + dir + "': missing " + kWeightsFile +
                            " (adapter_model.bin is not supported; convert "
                            "it to safetensors)");
  }
  ASSIGN_OR_RETURN(model::SafetensorsContents contents,
                   model::ReadSafetensors(weights_path));
  for (auto& [key, t] : contents.tensors) {
    if (!t.is_floating_point()) {
      return Status::InvalidArgument(
          weights_path + ": tensor '" + key +
          "': expected a float dtype, got " +
          std::string(c10::toString(t.scalar_type())));
    }
    try {
      saved.tensors[key] = t.to(torch::kFloat32);
    } catch (const std::exception& e) {
      return Status::Internal(weights_path + ": tensor '" + key +
                              "': " + e.what());
    }
  }
  if (saved.tensors.empty()) {
    return Status::InvalidArgument(weights_path + ": holds no tensors");
  }
  if (saved.options.method == "lora") {
    ASSIGN_OR_RETURN(auto ranks, LoraRanks(saved.tensors, weights_path));
    for (const auto& [path, r] : ranks) {
      const int expected = RankFor(saved.options.lora, path);
      if (r != expected) {
        return Status::InvalidArgument(
            weights_path + ": '" + kKeyPrefix + path +
            ".lora_A.weight': rank " + std::to_string(r) + " but " +
            kConfigFile + " gives this module r = " + std::to_string(expected) +
            " (check r / rank_pattern)");
      }
    }
  } else {
    RETURN_IF_ERROR(CheckBottleneckTensors(saved.options.bottleneck,
                                           saved.tensors, weights_path));
  }
  RETURN_IF_ERROR(
      CheckModulesDeclared(saved.options, saved.tensors, weights_path));
  return saved;
}

StatusOr<std::unique_ptr<PeftModel>> LoadPeftModel(
    std::shared_ptr<const model::LlamaWeights> base, const std::string& dir) {
  ASSIGN_OR_RETURN(SavedAdapter saved, LoadAdapter(dir));
  if (!base) return Status::InvalidArgument("LoadPeftModel: no base model");
  const std::string what = "adapter '" + dir + "'";
  for (const auto& kv : saved.tensors) {
    AdapterKey k;
    bool parsed = saved.options.method == "lora"
                      ? ParseLoraKey(kv.first, &k)
                      : ParseBottleneckKey(kv.first, &k);
    if (parsed && k.layer >= base->config.n_layers) {
      return Status::InvalidArgument(
          what + ": tensor '" + kv.first + "' is for layer " +
          std::to_string(k.layer) + " but the base model '" + base->source +
          "' has " + std::to_string(base->config.n_layers) +
          " layers (maybe wrong base model?)");
    }
  }
  // PeftModel::Create allocates what adapter_config.json asks for (ranks,
  // modules, layers) over the base; it must not ask for more parameters
  // than adapter_model.safetensors holds, or a hostile r would size the
  // allocation.
  RETURN_IF_ERROR(ValidatePeftOptions(saved.options, base->config.n_layers)
                      .WithContext(what + ": " + kConfigFile +
                                   " (maybe wrong base model?)"));
  ASSIGN_OR_RETURN(uint64_t requested,
                   RequestedParameters(saved.options, *base, what));
  uint64_t held = 0;
  for (const auto& kv : saved.tensors) {
    held += static_cast<uint64_t>(kv.second.numel());
  }
  if (requested > held) {
    return Status::InvalidArgument(
        what + ": " + kConfigFile + " asks for " + std::to_string(requested) +
        " adapter parameters over the base model '" + base->source +
        "' (r / rank_pattern / bottleneck_dim, target modules, layers), but " +
        kWeightsFile + " holds " + std::to_string(held) +
        " (maybe wrong base model?)");
  }
  auto created = PeftModel::Create(base, saved.options, /*seed=*/0);
  if (!created.ok()) {
    return created.status().WithContext(what + " (maybe wrong base model?)");
  }
  std::unique_ptr<PeftModel> peft = std::move(created).value();
  RETURN_IF_ERROR(peft->LoadAdapterTensors(saved.tensors).WithContext(what));
  peft->Train(false);
  return peft;
}

}  // namespace peft
}  // namespace fedpeft
