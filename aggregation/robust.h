// Byzantine-robust aggregation (Yin, Chen, Ramchandran, Bartlett 2018,
// "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
// Rates"): coordinate-wise statistics of the client deltas that a minority of
// arbitrary (malicious or broken) updates cannot drag far.
//
//   median        global[key] += per-coordinate median of Δ_k[key]. For an
//                 even count the median is the mean of the two middle values
//                 (torch::median returns the lower one, which would bias the
//                 result downwards, so it is not used).
//   trimmed_mean  per coordinate, sort the N values, drop k = floor(trim_ratio
//                 · N) from each end and average the N - 2k that remain
//                 (N - 2k ≥ 1 because trim_ratio < 0.5). trim_ratio = 0 is the
//                 uniform mean.
//
// Both ignore num_samples and StrategyOptions::weighted: a client-reported
// weight would let one attacker outvote the honest majority, which is what
// these rules exist to prevent. Stateless.
//
// Cost: per coordinate the N values are gathered into a small buffer and
// partially sorted (nth_element: one for the median, two for the trimmed
// mean), expected O(N) per coordinate, in a raw loop parallel over coordinates;
// no [N, ...] stacked copy is made. About 3-10x the time of fedavg
// (bench/bench_aggregation.cc).
//
// Thread-safety: as Strategy (one owning thread).
#ifndef FEDPEFT_AGGREGATION_ROBUST_H_
#define FEDPEFT_AGGREGATION_ROBUST_H_

#include <string>
#include <vector>

#include "aggregation/strategy.h"

namespace fedpeft {
namespace aggregation {

class CoordinateMedian : public Strategy {
 public:
  std::string name() const override { return "median"; }

  // Returns fresh tensors; `global` and the updates are not modified.
  StatusOr<TensorMap> Aggregate(
      const RoundContext& ctx, const TensorMap& global,
      const std::vector<ClientUpdate>& updates) override;

  // Stateless: accepts only an empty state.
  Status LoadState(const TensorMap& state) override;
};

class TrimmedMean : public Strategy {
 public:
  // REQUIRES: trim_ratio in [0, 0.5).
  explicit TrimmedMean(double trim_ratio) : trim_ratio_(trim_ratio) {}

  std::string name() const override { return "trimmed_mean"; }

  // Returns fresh tensors; `global` and the updates are not modified.
  StatusOr<TensorMap> Aggregate(
      const RoundContext& ctx, const TensorMap& global,
      const std::vector<ClientUpdate>& updates) override;

  // Stateless: accepts only an empty state.
  Status LoadState(const TensorMap& state) override;

  // Values cut at each end for `n` updates: floor(trim_ratio · n).
  int64_t TrimCount(int64_t n) const;

 private:
  const double trim_ratio_;
};

}  // namespace aggregation
}  // namespace fedpeft

#endif  // FEDPEFT_AGGREGATION_ROBUST_H_
