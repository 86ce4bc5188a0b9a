#include "aggregation/fedavg.h"

#include "aggregation/mean.h"

namespace fedpeft {
namespace aggregation {

Status CheckStatelessState(const std::string& strategy,
                           const TensorMap& state) {
  if (state.empty()) return Status::Ok();
  return Status::InvalidArgument(
      strategy + " keeps no optimizer state, got " +
      std::to_string(state.size()) + " tensors (first '" +
      state.begin()->first +
      "'; hint: was the checkpoint written by another strategy?)");
}

StatusOr<TensorMap> FedAvg::Aggregate(
    const RoundContext& ctx, const TensorMap& global,
    const std::vector<ClientUpdate>& updates) {
  RETURN_IF_ERROR(CheckAggregateInputs(name(), global, updates));
  try {
    const std::vector<double> weights = ClientWeights(updates, weighted_);
    TensorMap out;
    for (const auto& [key, g] : global) {
      // The mean is accumulated on its own and added to the global once, so
      // small deltas are not rounded N times at the global's magnitude.
      torch::Tensor mean = WeightedMeanDelta(key, updates, weights);
      out.emplace(key, mean.add_(g));
    }
    return out;
  } catch (const std::exception& e) {
    return Status::Internal(name() + ": aggregation failed in round " +
                            std::to_string(ctx.round) + ": " + e.what());
  }
}

Status FedAvg::LoadState(const TensorMap& state) {
  return CheckStatelessState(name(), state);
}

}  // namespace aggregation
}  // namespace fedpeft
