#include "coordinator/edge_rounds.h"

#include <algorithm>
#include <cmath>

#include "common/logging.h"

namespace fedpeft {
namespace coordinator {

StatusOr<std::unique_ptr<EdgeRounds>> EdgeRounds::Create(
    const CoordinatorConfig& config, const EdgePlan& plan) {
  CoordinatorConfig c = config;
  c.heterogeneity = plan.heterogeneity;
  c.freezing.ffa = plan.ffa;
  c.freezing.apf.enabled = false;  // the cloud decides freezing
  c.adapter_seed = plan.adapter_seed;
  c.strategy = aggregation::StrategyOptions{};  // HierFAVG: fedavg
  c.eval.data.path.clear();
  c.dp = DpOptions{};
  c.dp.enabled = plan.dp;
  c.dp.report_worker_metrics = plan.dp_report_worker_metrics;
  c.compression = plan.compression;
  c.secagg = plan.secagg;
  std::unique_ptr<EdgeRounds> e(new EdgeRounds());
  ASSIGN_OR_RETURN(e->engine_, RoundEngine::Create(c, /*cloud=*/false));
  RoundLogOptions log;
  log.label = "edge round";
  log.ranks = c.heterogeneity.enabled;
  log.strategy = e->engine_->merge().strategy_name();
  log.metrics_file = c.logging.metrics_file;
  ASSIGN_OR_RETURN(e->log_, RoundLog::Open(log));
  return e;
}

StatusOr<EdgeResult> EdgeRounds::Run(const TensorMap& cloud_global,
                                     const EdgeTask& task) {
  RoundEngine& engine = *engine_;
  const CoordinatorConfig& config = engine.config();
  const FederationOptions& f = config.federation;
  RETURN_IF_ERROR(engine.BeginUpstreamTask(cloud_global, task, edge_round_));
  EdgeResult result;
  std::map<std::string, uint64_t> samples;  // worker -> latest num_samples
  double loss_sum = 0, loss_weight = 0, eval_sum = 0;
  auto t0 = Clock::now();
  auto seconds_left = [&task]() {
    return (static_cast<double>(task.deadline_unix_ms) -
            static_cast<double>(UnixMillis())) /
           1000.0;
  };
  // Kept back from the edge rounds for aggregating and the upload to the
  // cloud, which must arrive before the cloud round's deadline.
  const double reserve_s =
      task.deadline_unix_ms > 0
          ? std::clamp(0.1 * seconds_left(), 0.5, 10.0) +
                (config.secagg.enabled ? config.secagg.unmask_timeout_s : 0)
          : 0;
  for (int i = 0; i < task.edge_rounds && !engine.stopped(); ++i) {
    // Each edge round gets its share of what is left of the cloud round.
    double deadline_s = f.round_deadline_s;
    if (task.deadline_unix_ms > 0) {
      const double left = seconds_left() - reserve_s;
      deadline_s = std::min(deadline_s, left / (task.edge_rounds - i));
    }
    if (deadline_s <= 0.05) {
      FP_LOG_WARN("coordinator",
                  "cloud round {}: no time left for edge round {} of {}",
                  task.cloud_round, i + 1, task.edge_rounds);
      break;
    }
    // Wait (within the round's time) for enough workers.
    auto until = Clock::now() + std::chrono::milliseconds(
                                    static_cast<int64_t>(deadline_s * 1000));
    size_t alive = 0, needed = 0;
    if (!engine.WaitForWorkersUntil(until, &alive, &needed)) {
      FP_LOG_WARN("coordinator",
                  "cloud round {}: only {} of {} workers alive at this edge",
                  task.cloud_round, alive, needed);
      break;
    }
    deadline_s = std::max(
        0.05, std::chrono::duration<double>(until - Clock::now()).count());
    // Edge rounds are numbered from the cloud round, so a restarted edge
    // never reuses a number its workers may still hold a task for.
    edge_round_ =
        std::max(edge_round_, (task.cloud_round - 1) * task.edge_rounds + i);
    const int64_t round = ++edge_round_;
    RoundMetrics m;
    bool ok = engine.RunRound(round, 0, deadline_s, &m);
    engine.Commit(m);
    const RoundEngine::Totals totals = engine.totals();
    log_->Write(m, totals.up, totals.down);
    if (!ok) continue;
    result.rounds_aggregated++;
    result.rank_min = m.rank_min;
    result.rank_max = m.rank_max;
    result.rank_mean = m.rank_mean;
    result.unclipped = std::isfinite(m.unclipped_count) ? m.unclipped_count : 0;
    result.users_selected = m.selected;
    result.users_alive = m.users_alive;
    for (const auto& h : engine.last_round_headers()) {
      samples[h.first] = h.second.num_samples;
      loss_sum += h.second.train_loss * h.second.num_samples;
      loss_weight += h.second.num_samples;
      if (std::isfinite(h.second.eval_loss) && h.second.eval_tokens > 0 &&
          i + 1 == task.edge_rounds) {
        eval_sum += h.second.eval_loss * h.second.eval_tokens;
        result.eval_tokens += h.second.eval_tokens;
      }
    }
  }
  for (const auto& kv : samples) result.num_samples += kv.second;
  result.workers = static_cast<int>(samples.size());
  result.train_loss = loss_weight > 0 ? loss_sum / loss_weight : std::nan("");
  result.eval_loss =
      result.eval_tokens > 0 ? eval_sum / result.eval_tokens : std::nan("");
  result.train_seconds = Seconds(Clock::now() - t0);
  result.adapter = *engine.global();
  if (engine.stopped()) return Status::Unavailable("edge stopped");
  if (result.rounds_aggregated == 0) {
    return Status::Unavailable("cloud round " +
                               std::to_string(task.cloud_round) +
                               ": no edge round reached its quorum");
  }
  return result;
}

}  // namespace coordinator
}  // namespace fedpeft
