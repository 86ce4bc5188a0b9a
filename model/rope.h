// Rotary position embedding frequencies, plain or scaled as a Hugging Face
// config.json's `rope_scaling` asks: the inverse frequencies of each rotary
// pair and the factor applied to cos/sin, as transformers'
// modeling_rope_utils.py defines them (ROPE_INIT_FUNCTIONS; cited, not
// copied). LlamaModel builds its cos/sin tables from RopeFrequencies.
//
//  * "default"/absent: inv_freq_i = theta^(-2i / head_dim).
//  * "linear" {factor}: inv_freq / factor (positions interpolated).
//  * "llama3" {factor, low_freq_factor, high_freq_factor,
//    original_max_position_embeddings} (Llama 3.1/3.2): with L = original,
//    wavelength w_i = 2 pi / inv_freq_i: w < L / high_freq_factor keeps
//    inv_freq, w > L / low_freq_factor divides it by factor, between the two
//    a smooth mix with s = (L / w - low) / (high - low):
//    (1 - s) inv_freq / factor + s inv_freq.
//  * "dynamic" {factor} (dynamic NTK): a forward whose last position is
//    seq_len - 1 with seq_len > max_position_embeddings uses
//    theta' = theta * (factor * seq_len / max_pos - (factor - 1))^(d / (d -
//    2)); shorter forwards use plain RoPE. This is stateless: transformers
//    recomputes only when a forward is longer than every earlier one and
//    keeps the longer one's frequencies until a forward is shorter than
//    max_position_embeddings again, so the two agree for a fresh model and
//    for generation (lengths only grow), and differ for a forward of length
//    in (max_pos, longest so far) after a longer one. Like transformers,
//    keys already in a KV cache keep the rotation they were cached with.
//    The context limit becomes floor(factor * max_position_embeddings)
//    (LlamaConfig::context_length), since the scaling exists to go beyond
//    it.
//  * "yarn" {factor, original_max_position_embeddings?, beta_fast = 32,
//    beta_slow = 1, attention_factor?, mscale?, mscale_all_dim?,
//    truncate = true}: as transformers' current modeling_rope_utils.py
//    computes it: with original_max_position_embeddings given, the
//    effective factor is max_position_embeddings /
//    original_max_position_embeddings and the configured factor is unused
//    (its DeepSeek-V3 note; older releases used factor); without it, factor
//    is used and the original length is max_position_embeddings.
//    Dimensions below the beta_fast correction dimension keep inv_freq
//    (extrapolation), those above beta_slow's take inv_freq / factor
//    (interpolation), a linear ramp between; cos and sin are multiplied by
//    attention_factor (default 0.1 ln(factor) + 1, or the mscale ratio).
//
// Thread-safety: plain values and free functions.
#ifndef FEDPEFT_MODEL_ROPE_H_
#define FEDPEFT_MODEL_ROPE_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace model {

// `rope_scaling` of a config.json. Fields not used by `type` stay at their
// defaults and are not written back.
struct RopeScaling {
  std::string type;     // "" (none), "linear", "dynamic", "yarn", "llama3"
  double factor = 1.0;  // all types; > 0
  // llama3 (required) and yarn (optional; 0 = absent).
  int64_t original_max_position_embeddings = 0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3; > low_freq_factor
  double beta_fast = 32.0;        // yarn
  double beta_slow = 1.0;         // yarn
  double attention_factor = 0.0;  // yarn; 0 = derived from factor/mscale
  double mscale = 0.0;            // yarn (DeepSeek); 0 = absent
  double mscale_all_dim = 0.0;    // yarn (DeepSeek); 0 = absent
  bool truncate = true;           // yarn: round the correction range

  bool enabled() const { return !type.empty(); }

  // The supported `type` values, for messages: "linear, dynamic, yarn,
  // llama3".
  static const char* SupportedTypes();

  // Appends "rope_scaling.<field>: ..." for every bad field to `errors`.
  void Validate(std::vector<std::string>* errors) const;

  // From the value of config.json's `rope_scaling` (null -> none). The type
  // is read from "rope_type", else "type", as transformers does; "default"
  // means none. `source` names the file in errors; an unknown type is
  // Unimplemented naming the file, the key and the supported values.
  static StatusOr<RopeScaling> FromHfJson(const nlohmann::json& j,
                                          const std::string& source);
  // null when disabled, else {"rope_type": type, ...its fields}.
  nlohmann::json ToHfJson() const;
};

// Frequencies of RoPE for one forward.
struct RopeFrequencies {
  std::vector<double> inv_freq;   // [head_dim / 2]
  double attention_factor = 1.0;  // multiplies cos and sin
};

// The frequencies for a forward of total length `seq_len` (cached plus new
// tokens; only "dynamic" depends on it). REQUIRES: head_dim even and > 2
// for dynamic, scaling validated.
RopeFrequencies ComputeRopeFrequencies(const RopeScaling& scaling,
                                       int64_t head_dim, double theta,
                                       int64_t max_position_embeddings,
                                       int64_t seq_len);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_ROPE_H_
