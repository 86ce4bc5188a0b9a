// FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep
// Networks from Decentralized Data"): the new global adapter is the old one
// plus the mean of the client deltas, weighted by each client's num_samples
// (or uniform when StrategyOptions::weighted is false):
//
//   global[key] += Σ_k n_k Δ_k[key] / Σ_k n_k
//
// Stateless. LoRA's A and B are averaged separately (see strategy.h).
//
// Thread-safety: as Strategy (one owning thread).
#ifndef FEDPEFT_AGGREGATION_FEDAVG_H_
#define FEDPEFT_AGGREGATION_FEDAVG_H_

#include <string>
#include <vector>

#include "aggregation/strategy.h"

namespace fedpeft {
namespace aggregation {

class FedAvg : public Strategy {
 public:
  explicit FedAvg(bool weighted) : weighted_(weighted) {}

  std::string name() const override { return "fedavg"; }

  // Returns fresh tensors; `global` and the updates are not modified.
  StatusOr<TensorMap> Aggregate(
      const RoundContext& ctx, const TensorMap& global,
      const std::vector<ClientUpdate>& updates) override;

  // Stateless: accepts only an empty state.
  Status LoadState(const TensorMap& state) override;

 private:
  const bool weighted_;
};

// The shared refusal of stateless strategies (fedavg, median, trimmed_mean)
// to load a non-empty state: a checkpoint of another strategy.
Status CheckStatelessState(const std::string& strategy, const TensorMap& state);

}  // namespace aggregation
}  // namespace fedpeft

#endif  // FEDPEFT_AGGREGATION_FEDAVG_H_
