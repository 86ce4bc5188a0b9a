#include "worker/data_parallel.h"

#include <cmath>
#include <stdexcept>

namespace fedpeft {
namespace worker {

void MakeDataParallel(DistributedGroup& group, TrainOptions* options) {
  options->shard_rank = group.rank();
  options->shard_count = group.world_size();
  DistributedGroup* g = &group;
  options->reduce_step = [g](StepShare& share) {
    // The loss rides along with the gradients: one message per step.
    torch::Tensor loss = torch::full({1}, share.loss, torch::kFloat64);
    std::vector<torch::Tensor> tensors = share.grads;
    tensors.push_back(loss);
    StatusOr<double> tokens =
        g->AllReduceWeightedMean(tensors, static_cast<double>(share.tokens));
    if (!tokens.ok()) throw std::runtime_error(tokens.status().message());
    share.tokens = static_cast<int64_t>(std::llround(*tokens));
    share.loss = loss.item<double>();
  };
}

namespace {

constexpr uint64_t kFnvOffset = 1469598103934665603ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;

void Mix(uint64_t* h, const void* data, size_t n) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) *h = (*h ^ bytes[i]) * kFnvPrime;
}

}  // namespace

uint64_t ExamplesFingerprint(const std::vector<data::Example>& examples) {
  uint64_t h = kFnvOffset;
  for (const data::Example& e : examples) {
    const uint64_t n = e.tokens.size();
    Mix(&h, &n, sizeof(n));
    Mix(&h, e.tokens.data(), e.tokens.size() * sizeof(e.tokens[0]));
    Mix(&h, e.targets.data(), e.targets.size() * sizeof(e.targets[0]));
  }
  return h;
}

uint64_t LayoutFingerprint(const TensorMap& tensors) {
  uint64_t h = kFnvOffset;
  for (const auto& [key, t] : tensors) {
    Mix(&h, key.data(), key.size() + 1);  // with the NUL: names stay apart
    for (int64_t d : t.sizes()) Mix(&h, &d, sizeof(d));
  }
  return h;
}

}  // namespace worker
}  // namespace fedpeft
