// Autoregressive decoding with a KV cache: greedy at temperature 0 (and then
// deterministic), otherwise temperature + optional top-p sampling from a
// seeded generator.
//
// Thread-safety: uses the model; one thread at a time per model.
#ifndef FEDPEFT_MODEL_GENERATE_H_
#define FEDPEFT_MODEL_GENERATE_H_

#include <cstdint>
#include <vector>

#include "model/llama.h"

namespace fedpeft {
namespace model {

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0 = greedy
  double top_p = 1.0;        // nucleus sampling when < 1
  uint64_t seed = 0;
  bool stop_at_eos = true;
};

// Returns only the new token ids (prompt excluded). Stops at EOS (not
// included) or at max_new_tokens, or when the context is full.
// REQUIRES: !prompt.empty().
std::vector<int64_t> Generate(LlamaModel& model,
                              const std::vector<int64_t>& prompt,
                              const GenerateOptions& options);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_GENERATE_H_
