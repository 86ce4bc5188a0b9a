#include "model/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "common/logging.h"

namespace fedpeft {
namespace model {
namespace {

// Uniform double in [0, 1) from 53 random bits: the same on every standard
// library, unlike std::uniform_real_distribution.
double Uniform(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace

int64_t PickToken(const torch::Tensor& logits_row, double temperature,
                  double top_p, std::mt19937_64& rng) {
  torch::Tensor row = logits_row.to(torch::kCPU, torch::kFloat64).contiguous();
  const double* l = row.data_ptr<double>();
  const int64_t n = row.numel();
  if (temperature <= 0.0) {
    // Greedy; ties go to the lowest id.
    return std::max_element(l, l + n) - l;
  }
  // Softmax of logits / temperature, in double.
  const double max_logit = *std::max_element(l, l + n);
  std::vector<double> probs(n);
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    probs[i] = std::exp((l[i] - max_logit) / temperature);
    total += probs[i];
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  int64_t keep = n;
  if (top_p < 1.0) {
    // Nucleus: the most probable tokens whose mass first reaches top_p.
    std::stable_sort(
        order.begin(), order.end(),
        [&probs](int64_t a, int64_t b) { return probs[a] > probs[b]; });
    double mass = 0.0;
    const double target = std::max(top_p, 0.0) * total;
    for (keep = 0; keep < n;) {
      mass += probs[order[keep]];
      ++keep;
      if (mass >= target) break;
    }
    total = mass;
  }
  double u = Uniform(rng) * total;
  for (int64_t i = 0; i < keep; ++i) {
    u -= probs[order[i]];
    if (u < 0.0) return order[i];
  }
  return order[keep - 1];  // rounding left u >= 0
}

std::vector<int64_t> Generate(LlamaModel& model,
                              const std::vector<int64_t>& prompt,
                              const GenerateOptions& options,
                              const TokenCallback& on_token) {
  TORCH_CHECK(!prompt.empty(), "Generate: the prompt is empty");
  std::vector<int64_t> out;
  const int64_t context = model.config().context_length();
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  if (prompt_len >= context) {
    FP_LOG_WARN("generate",
                "prompt of {} tokens fills the context of {}; nothing to "
                "generate",
                prompt_len, context);
    return out;
  }
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();  // no dropout in adapters while decoding

  std::mt19937_64 rng(options.seed);
  const torch::Device device = model.weights()->device();
  KvCache cache;
  torch::Tensor tokens =
      torch::tensor(prompt, torch::kInt64).view({1, prompt_len}).to(device);
  // Only the last position's logits are needed: the output layer runs on
  // one row (a [prompt, vocab] product would be wasted).
  torch::Tensor hidden = model.Hidden(tokens, &cache);
  torch::Tensor logits = model.Logits(hidden.narrow(1, prompt_len - 1, 1));
  while (static_cast<int64_t>(out.size()) < options.max_new_tokens &&
         prompt_len + static_cast<int64_t>(out.size()) < context) {
    const int64_t next =
        PickToken(logits[0][0], options.temperature, options.top_p, rng);
    if (options.stop_at_eos && next == model.config().eos_id) break;
    if (std::find(options.stop_ids.begin(), options.stop_ids.end(), next) !=
        options.stop_ids.end()) {
      break;
    }
    out.push_back(next);
    if (on_token && !on_token(next)) break;
    if (static_cast<int64_t>(out.size()) >= options.max_new_tokens ||
        prompt_len + static_cast<int64_t>(out.size()) >= context) {
      break;
    }
    logits = model.Forward(
        torch::full({1, 1}, next, torch::TensorOptions(torch::kInt64))
            .to(device),
        &cache);
  }
  model.train(was_training);
  return out;
}

}  // namespace model
}  // namespace fedpeft
