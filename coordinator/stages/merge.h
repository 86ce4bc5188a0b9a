// The merge: a round's accepted updates into the next global adapter,
// through the aggregation library (aggregation/, its API unchanged).
//
//   DP round      ─▶ the privacy stage's noised mean, one update, through
//                    the strategy (fedavg, fedavgm, fedadam, fedyogi)
//   heterogeneous ─▶ aggregation::HeteroAggregate (zero_pad, svd, stack)
//   otherwise     ─▶ the strategy over the updates, each tensor averaged
//                    over the workers that sent it
//
// LoRA A and B are averaged separately (FedAvg over parameters), not as
// the product B·A.
//
// Thread-safety: the round loop only.
#ifndef FEDPEFT_COORDINATOR_STAGES_MERGE_H_
#define FEDPEFT_COORDINATOR_STAGES_MERGE_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "aggregation/hetero_rank.h"
#include "aggregation/strategy.h"
#include "coordinator/round_types.h"

namespace fedpeft {
namespace coordinator {

class Merge {
 public:
  static StatusOr<std::unique_ptr<Merge>> Create(
      const aggregation::StrategyOptions& strategy,
      std::optional<aggregation::HeteroOptions> hetero);

  // The next global from `current` and the round's updates. `dp_mean`: a DP
  // round's noised mean, which replaces the updates. `init`: the initial
  // global (the svd and stack merges need it).
  StatusOr<TensorMap> Next(int64_t round, const TensorMap& current,
                           const TensorMap& init,
                           const std::vector<Update>& updates,
                           std::optional<TensorMap> dp_mean, double train_loss);

  const std::string& strategy_name() const { return name_; }
  TensorMap StrategyState() const { return strategy_->State(); }
  Status LoadStrategyState(const TensorMap& state) {
    return strategy_->LoadState(state);
  }

 private:
  Merge() = default;
  std::unique_ptr<aggregation::Strategy> strategy_;
  std::string name_;
  bool weighted_ = true;
  std::optional<aggregation::HeteroOptions> hetero_;
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_STAGES_MERGE_H_
