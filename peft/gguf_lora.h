// A LoRA adapter as the GGUF file llama.cpp loads with --lora (and
// llama_adapter_lora_init): general.type "adapter", adapter.type "lora",
// adapter.lora.alpha, and per adapted projection the pair
//   blk.N.<tensor>.weight.lora_a  ne = {in, r}   (PEFT's lora_A [r, in])
//   blk.N.<tensor>.weight.lora_b  ne = {r, out}  (PEFT's lora_B [out, r])
// in F32, named after the base tensor (model/gguf_export.h).
//
// The scale. llama.cpp applies every pair as
//   W x + s_llama * B (A x),  s_llama = user_scale * alpha_file / r_t
// (llama_adapter_lora_weight::get_scale, r_t read from lora_b's ne[0]; a
// zero alpha means s_llama = user_scale), with one alpha for the whole file.
// Our true scale s_t of a module is alpha_t / r_t, or alpha_t / sqrt(r_t)
// with rsLoRA, with alpha_t and r_t from alpha_pattern / rank_pattern. So we
// write alpha_file = lora.alpha and multiply each lora_b by
//   s_t * r_t / alpha_file,
// which is 1 for plain LoRA without patterns (lora_b written unchanged) and
// makes llama.cpp apply exactly s_t at user scale 1 otherwise.
//
// Row order: for the "llama" architecture the q_proj/k_proj lora_b rows are
// permuted per head like the base weights (GgufRowOrder), since B's rows are
// the projection's outputs. lora_a is never permuted (its columns are the
// model's hidden dims, in the same order in both layouts).
//
// Thread-safety: free function.
#ifndef FEDPEFT_PEFT_GGUF_LORA_H_
#define FEDPEFT_PEFT_GGUF_LORA_H_

#include <string>

#include "common/status.h"
#include "model/llama.h"
#include "peft/peft_model.h"

namespace fedpeft {
namespace peft {

// Writes the LoRA tensors `tensors` (PEFT keys, as PeftModel::AdapterTensors
// gives them) trained with `options` on a base with `config` to `path`
// (atomically). Unimplemented for bottleneck adapters or an architecture
// model/gguf_export.h does not support; InvalidArgument naming the key for
// a key that is not a LoRA projection or an A/B pair that is incomplete or
// whose ranks differ.
Status WriteGgufLora(const PeftOptions& options, const TensorMap& tensors,
                     const model::LlamaConfig& config, const std::string& path,
                     const std::string& name = "");

}  // namespace peft
}  // namespace fedpeft

#endif  // FEDPEFT_PEFT_GGUF_LORA_H_
