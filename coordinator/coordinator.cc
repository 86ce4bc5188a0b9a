#include "coordinator/coordinator.h"

#include "common/logging.h"
#include "common/process_stats.h"

namespace fedpeft {
namespace coordinator {

Coordinator::~Coordinator() = default;

StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(
    const CoordinatorConfig& config,
    std::shared_ptr<const model::LlamaWeights> base) {
  std::unique_ptr<Coordinator> c(new Coordinator());
  ASSIGN_OR_RETURN(
      c->engine_, RoundEngine::Create(config, /*cloud=*/true, std::move(base)));
  c->model_source_ = std::make_unique<delivery::LocalModelSource>(
      config.model.path,
      config.model.BlockSizeFor(config.server.max_message_mb));
  c->checkpoints_ =
      std::make_unique<CheckpointStore>(config.checkpoint, *c->engine_);
  ASSIGN_OR_RETURN(c->completed_rounds_, c->checkpoints_->Restore());
  RoundLogOptions log;
  log.label = "round";
  log.total_rounds = config.federation.rounds;
  log.ranks = config.heterogeneity.enabled;
  log.frozen = config.freezing.apf.enabled;
  log.strategy = c->engine_->merge().strategy_name();
  log.metrics_file = config.logging.metrics_file;
  ASSIGN_OR_RETURN(c->log_, RoundLog::Open(log));
  const std::string& line = c->checkpoints_->restored_metrics_line();
  ASSIGN_OR_RETURN(bool restored, c->log_->Restore(line));
  if (restored) {
    FP_LOG_INFO("coordinator",
                "{}: round {}'s line was lost when the coordinator stopped; "
                "written from the checkpoint",
                log.metrics_file, c->completed_rounds_);
  }
  return c;
}

bool Coordinator::BudgetAllows(int64_t round) {
  PrivacyStage& privacy = *engine_->stages().privacy;
  double epsilon = 0;
  if (!privacy.WouldOverspend(engine_->ExpectedSamplingRate(), &epsilon)) {
    return true;
  }
  FP_LOG_WARN("coordinator",
              "dp: privacy budget spent: round {} would bring epsilon to "
              "{:.4g} > dp.target_epsilon {:.4g}; stopping after round {}",
              round, epsilon, config().dp.target_epsilon, completed_rounds_);
  return false;
}

Status Coordinator::Run() {
  const CoordinatorConfig& config = engine_->config();
  const FederationOptions& f = config.federation;
  FP_LOG_INFO("coordinator",
              "federation '{}': {} rounds, strategy {}, fraction {:.2f} "
              "(min {}, max {}), quorum {:.2f}, deadline {:.0f}s, model {}, "
              "adapter {} ({} tensors), checkpoints in {}",
              f.id, f.rounds, engine_->merge().strategy_name(), f.fraction,
              f.min_workers, f.max_workers, f.quorum, f.round_deadline_s,
              config.model.path, config.peft.method,
              engine_->AdapterTemplate().size(), config.checkpoint.dir);
  auto metrics_line = [this](const RoundMetrics& m) {
    const RoundEngine::Totals t = engine_->totals();
    return log_->MetricsLine(m, t.up, t.down,
                             model_source_->stats().bytes_served);
  };
  for (int64_t round = completed_rounds_ + 1;
       round <= f.rounds && !engine_->stopped(); ++round) {
    int attempt = 0;
    bool budget_spent = false;
    while (!engine_->stopped()) {
      if (!engine_->WaitForWorkers()) break;
      if (config.dp.enabled) {
        RETURN_IF_ERROR(engine_->stages().privacy->Init(
            engine_->AliveCounts(), engine_->ExpectedSamplingRate()));
        // Stop before a round that would overspend.
        if (!BudgetAllows(round)) {
          budget_spent = true;
          break;
        }
      }
      RoundMetrics m;
      bool ok = engine_->RunRound(round, attempt, f.round_deadline_s, &m);
      if (engine_->stopped()) break;
      if (!ok && f.on_quorum_miss == "retry" && attempt < f.max_retries) {
        log_->Write(m, metrics_line(m));
        ++attempt;
        continue;
      }
      // checkpoint (a skipped round keeps the previous adapter), with the
      // round's metrics line: a crash before Write loses no line
      const std::string line = metrics_line(m);
      Status s = checkpoints_->Save(round, line);
      if (!s.ok()) {
        return s.WithContext("checkpoint after round " + std::to_string(round));
      }
      completed_rounds_ = round;
      engine_->Commit(m);
      log_->Write(m, line);
      break;
    }
    if (budget_spent) break;
  }
  if (engine_->stopped()) {
    engine_->Finish();
    FP_LOG_WARN("coordinator", "stopped after round {}", completed_rounds_);
    return Status::Ok();
  }
  FP_LOG_INFO("coordinator",
              "federation '{}' finished {} rounds; telling workers to shut "
              "down for {:.0f}s (peak RSS {:.0f} MiB)",
              f.id, completed_rounds_, f.shutdown_grace_s, PeakRssMib());
  engine_->Finish();
  return Status::Ok();
}

}  // namespace coordinator
}  // namespace fedpeft
