// Autoregressive decoding with a KV cache: greedy at temperature 0 (and then
// deterministic), otherwise temperature + optional top-p sampling from a
// seeded generator.
//
// Thread-safety: uses the model; one thread at a time per model.
#ifndef FEDPEFT_MODEL_GENERATE_H_
#define FEDPEFT_MODEL_GENERATE_H_

#include <cstdint>
#include <functional>
#include <random>
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
  // More ids that end the answer (not included), e.g. a chat template's
  // end-of-turn token.
  std::vector<int64_t> stop_ids;
};

// Called with each new token id as it is chosen; returning false stops
// generation there (the token is kept).
using TokenCallback = std::function<bool(int64_t)>;

// The next token from one row of logits [vocab]: the argmax at temperature
// 0 (ties to the lowest id), otherwise a draw from softmax(logits /
// temperature), cut to the nucleus `top_p`, with `rng`. What Generate does
// per step; a pipeline's last stage does the same.
int64_t PickToken(const torch::Tensor& logits_row, double temperature,
                  double top_p, std::mt19937_64& rng);

// Returns only the new token ids (prompt excluded). Stops at EOS or a stop
// id (not included), at max_new_tokens, when the context is full, or when
// `on_token` returns false.
// REQUIRES: !prompt.empty().
std::vector<int64_t> Generate(LlamaModel& model,
                              const std::vector<int64_t>& prompt,
                              const GenerateOptions& options,
                              const TokenCallback& on_token = nullptr);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_GENERATE_H_
