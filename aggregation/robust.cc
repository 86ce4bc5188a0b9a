#include "aggregation/robust.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "aggregation/fedavg.h"  // CheckStatelessState
#include "aggregation/mean.h"

namespace fedpeft {
namespace aggregation {
namespace {

// Applies `reduce(values, n)` to every coordinate of `key`: the N clients'
// values of one coordinate are gathered into a small buffer and reduced to
// one float. A plain loop over raw pointers: LibTorch's sort on many short
// rows (or along a strided client dimension) is ~10x slower, and this needs
// no stacked [N, ...] copy. Parallel over coordinates with LibTorch's
// intra-op threads. Returns a fresh tensor shaped like the key's deltas.
template <typename Reduce>
torch::Tensor PerCoordinate(const std::string& key,
                            const std::vector<ClientUpdate>& updates,
                            Reduce reduce) {
  const int64_t n = static_cast<int64_t>(updates.size());
  std::vector<torch::Tensor> deltas;  // aliases unless a copy is needed
  std::vector<const float*> ptrs;
  deltas.reserve(n);
  for (const ClientUpdate& u : updates) {
    deltas.push_back(u.delta.at(key).contiguous());
    ptrs.push_back(deltas.back().data_ptr<float>());
  }
  torch::Tensor out = torch::empty_like(deltas[0]);
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, out.numel(), 2048, [&](int64_t begin, int64_t end) {
    std::vector<float> values(n);
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t k = 0; k < n; ++k) values[k] = ptrs[k][i];
      dst[i] = reduce(values.data(), n);
    }
  });
  return out;
}

}  // namespace

StatusOr<TensorMap> CoordinateMedian::Aggregate(
    const RoundContext& ctx, const TensorMap& global,
    const std::vector<ClientUpdate>& updates) {
  RETURN_IF_ERROR(CheckAggregateInputs(name(), global, updates));
  try {
    TensorMap out;
    for (const auto& [key, g] : global) {
      const torch::Tensor median =
          PerCoordinate(key, updates, [](float* v, int64_t n) {
            float* upper = v + n / 2;
            std::nth_element(v, upper, v + n);
            if (n % 2 == 1) return *upper;
            // Even count: the mean of the two middle values; the lower one
            // is the largest of the partition below. a/2 + b/2 so two huge
            // finite values cannot overflow to Inf.
            const float lower = *std::max_element(v, upper);
            return 0.5f * lower + 0.5f * *upper;
          });
      out.emplace(key, torch::add(g, median));
    }
    return out;
  } catch (const std::exception& e) {
    return Status::Internal(name() + ": aggregation failed in round " +
                            std::to_string(ctx.round) + ": " + e.what());
  }
}

Status CoordinateMedian::LoadState(const TensorMap& state) {
  return CheckStatelessState(name(), state);
}

int64_t TrimmedMean::TrimCount(int64_t n) const {
  return static_cast<int64_t>(std::floor(trim_ratio_ * static_cast<double>(n)));
}

StatusOr<TensorMap> TrimmedMean::Aggregate(
    const RoundContext& ctx, const TensorMap& global,
    const std::vector<ClientUpdate>& updates) {
  RETURN_IF_ERROR(CheckAggregateInputs(name(), global, updates));
  try {
    const int64_t n = static_cast<int64_t>(updates.size());
    const int64_t k = TrimCount(n);
    TensorMap out;
    if (k == 0) {
      // Nothing is cut: the uniform mean, without the per-coordinate sort.
      const std::vector<double> weights = ClientWeights(updates, false);
      for (const auto& [key, g] : global) {
        out.emplace(key, WeightedMeanDelta(key, updates, weights).add_(g));
      }
      return out;
    }
    for (const auto& [key, g] : global) {
      const torch::Tensor trimmed =
          PerCoordinate(key, updates, [k](float* v, int64_t n) {
            // Two selections (expected O(n)) move the k smallest to the
            // front and the k largest to the back; the middle is kept.
            std::nth_element(v, v + k, v + n);
            std::nth_element(v + k, v + n - k, v + n);
            double sum = 0.0;  // the kept values, summed in double
            for (int64_t i = k; i < n - k; ++i) sum += v[i];
            return static_cast<float>(sum / static_cast<double>(n - 2 * k));
          });
      out.emplace(key, torch::add(g, trimmed));
    }
    return out;
  } catch (const std::exception& e) {
    return Status::Internal(name() + ": aggregation failed in round " +
                            std::to_string(ctx.round) + ": " + e.what());
  }
}

Status TrimmedMean::LoadState(const TensorMap& state) {
  return CheckStatelessState(name(), state);
}

}  // namespace aggregation
}  // namespace fedpeft
