// Import and export of adapters in the Hugging Face PEFT format:
//   adapter_config.json       peft_type, r, lora_alpha, target_modules,
//                             lora_dropout, bias "none", task_type CAUSAL_LM,
//                             base_model_name_or_path, rank_pattern /
//                             alpha_pattern when ranks differ by module,
//                             layers_to_transform, use_rslora
//   adapter_model.safetensors PEFT key names, F32
// Bottleneck adapters use the same two files with peft_type
// "FEDPEFT_BOTTLENECK" (Hugging Face PEFT has no such type; fedpeft loads it).
//
// Thread-safety: free functions.
#ifndef FEDPEFT_PEFT_PEFT_IO_H_
#define FEDPEFT_PEFT_PEFT_IO_H_

#include <nlohmann/json.hpp>
#include <string>

#include "common/status.h"
#include "peft/peft_model.h"

namespace fedpeft {
namespace peft {

struct SavedAdapter {
  PeftOptions options;
  TensorMap tensors;       // PEFT keys
  std::string base_model;  // base_model_name_or_path
};

// The adapter_config.json contents SaveAdapter writes for `options` (what
// the coordinator sends workers at registration and keeps in checkpoints).
nlohmann::json AdapterConfigToJson(const PeftOptions& options,
                                   const std::string& base_model);
// Parses and validates adapter_config.json text; `source` names it in
// errors.
StatusOr<PeftOptions> AdapterConfigFromJson(const std::string& json_text,
                                            const std::string& source);

// Writes `dir`/adapter_config.json and `dir`/adapter_model.safetensors
// atomically (creating `dir`).
Status SaveAdapter(const std::string& dir, const PeftOptions& options,
                   const TensorMap& tensors, const std::string& base_model);

// Reads both files, validates the config (peft_type, task_type, r > 0,
// target modules known) and that every tensor key is a PEFT key of the
// declared kind; errors name the file and key.
StatusOr<SavedAdapter> LoadAdapter(const std::string& dir);

// Loads `dir` and builds a PeftModel over `base` carrying it; checks every
// shape against the base ("maybe wrong base model?").
StatusOr<std::unique_ptr<PeftModel>> LoadPeftModel(
    std::shared_ptr<const model::LlamaWeights> base, const std::string& dir);

}  // namespace peft
}  // namespace fedpeft

#endif  // FEDPEFT_PEFT_PEFT_IO_H_
