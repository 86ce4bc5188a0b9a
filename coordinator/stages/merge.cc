#include "coordinator/stages/merge.h"

#include "aggregation/mean.h"
#include "common/logging.h"

namespace fedpeft {
namespace coordinator {

StatusOr<std::unique_ptr<Merge>> Merge::Create(
    const aggregation::StrategyOptions& strategy,
    std::optional<aggregation::HeteroOptions> hetero) {
  std::unique_ptr<Merge> m(new Merge());
  ASSIGN_OR_RETURN(m->strategy_, aggregation::MakeStrategy(strategy));
  m->name_ = m->strategy_->name();
  m->weighted_ = strategy.weighted;
  m->hetero_ = std::move(hetero);
  return m;
}

StatusOr<TensorMap> Merge::Next(int64_t round, const TensorMap& current,
                                const TensorMap& init,
                                const std::vector<Update>& updates,
                                std::optional<TensorMap> dp_mean,
                                double train_loss) {
  aggregation::RoundContext ctx;
  ctx.round = round;
  if (dp_mean) {
    // DP-FedAvg: every user weighs the same (the noise is calibrated to
    // one user's clipped update); the strategy applies the noised mean.
    aggregation::ClientUpdate u;
    u.worker_id = "dp-mean";
    u.delta = std::move(*dp_mean);
    u.num_samples = 1;
    u.train_loss = train_loss;
    return strategy_->Aggregate(ctx, current, {u});
  }
  std::vector<aggregation::ClientUpdate> client;
  for (const auto& p : updates) {
    aggregation::ClientUpdate u;
    u.worker_id = p.worker_id;
    u.delta = p.delta;  // shares the tensors
    u.num_samples = static_cast<int64_t>(p.header.num_samples);
    u.train_loss = p.header.train_loss;
    client.push_back(std::move(u));
  }
  if (hetero_) {
    std::vector<aggregation::HeteroUpdate> hu;
    for (auto& u : client) {
      aggregation::HeteroUpdate h;
      h.worker_id = u.worker_id;
      h.delta = std::move(u.delta);
      h.num_samples = u.num_samples;
      h.rank = 0;
      for (const auto& p : updates) {
        if (p.worker_id != u.worker_id) continue;
        h.rank = p.header.rank;
        h.whole_adapter = p.header.whole_adapter;
      }
      // Rank 0 (an edge): the global's own shapes.
      if (h.rank == 0) {
        for (const auto& [module, r] : aggregation::ModuleRanks(current)) {
          h.rank = std::max(h.rank, r);
        }
      }
      hu.push_back(std::move(h));
    }
    aggregation::HeteroStats stats;
    ASSIGN_OR_RETURN(TensorMap next, aggregation::HeteroAggregate(
                                         *hetero_, current, init, hu, &stats));
    if (stats.truncated_energy > 1e-6) {
      FP_LOG_INFO("coordinator",
                  "round {}: {} merge dropped {:.2g} of the update's energy "
                  "(rank cap)",
                  round, aggregation::HeteroMethodName(hetero_->method),
                  stats.truncated_energy);
    }
    return next;
  }
  // Tensors an update left out (frozen, FFA-LoRA's A, layers a weak
  // worker froze) are unchanged for that worker: the mean of a tensor is
  // taken over the workers that trained it, which is what filling the
  // gaps with that mean gives every weighted-mean strategy.
  std::vector<double> weights = aggregation::ClientWeights(client, weighted_);
  for (const auto& [key, t] : current) {
    double w_sum = 0;
    torch::Tensor acc;
    for (size_t k = 0; k < client.size(); ++k) {
      auto it = client[k].delta.find(key);
      if (it == client[k].delta.end()) continue;
      acc = acc.defined() ? acc + weights[k] * it->second
                          : weights[k] * it->second;
      w_sum += weights[k];
    }
    torch::Tensor fill = acc.defined() ? acc / w_sum : torch::zeros_like(t);
    for (auto& u : client) {
      if (!u.delta.count(key)) u.delta[key] = fill;
    }
  }
  return strategy_->Aggregate(ctx, current, client);
}

}  // namespace coordinator
}  // namespace fedpeft
