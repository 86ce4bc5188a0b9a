#include "coordinator/checkpoint_store.h"

#include "aggregation/hetero_rank.h"
#include "aggregation/mean.h"
#include "common/logging.h"
#include "peft/peft_io.h"

namespace fedpeft {
namespace coordinator {

StatusOr<int64_t> CheckpointStore::Restore() {
  const CoordinatorConfig& config = engine_.config();
  const std::string& dir = options_.dir;
  auto ckpt = LoadLatestCheckpoint(dir);
  if (!ckpt.ok()) {
    if (ckpt.status().code() == StatusCode::kNotFound) return 0;
    return ckpt.status();
  }
  const std::string where = "checkpoint in '" + dir + "'";
  if (ckpt->federation_id != config.federation.id) {
    return Status::FailedPrecondition(
        where + " belongs to federation '" + ckpt->federation_id +
        "', this config runs '" + config.federation.id +
        "' (use another checkpoint.dir or the same federation.id)");
  }
  Merge& merge = engine_.merge();
  if (ckpt->strategy != merge.strategy_name()) {
    return Status::FailedPrecondition(where + " used strategy '" +
                                      ckpt->strategy + "', the config says '" +
                                      merge.strategy_name() + "'");
  }
  aggregation::ClientUpdate probe;
  probe.worker_id = "checkpoint";
  probe.delta = ckpt->global;
  probe.num_samples = 1;
  // The stack merge keeps a variable rank per module: only names count.
  Status compatible =
      engine_.stages().planner->stack()
          ? aggregation::LoraPairs(ckpt->global).status()
          : aggregation::ValidateUpdate(engine_.AdapterTemplate(), probe);
  if (!compatible.ok()) {
    return Status::FailedPrecondition(
        where +
        " does not match the configured adapter: " + compatible.message());
  }
  RETURN_IF_ERROR(merge.LoadStrategyState(ckpt->strategy_state));
  if (!engine_.SetRngState(ckpt->rng_state).ok()) {
    return Status::Corruption(where + ": rng_state is not a generator state");
  }
  auto global = std::make_shared<const TensorMap>(std::move(ckpt->global));
  const SavedState saved{ckpt->extra, ckpt->round, where};
  Status loaded = engine_.WithRegistry([&](Registry&) {
    for (RoundStage* s : engine_.stages().order) {
      RETURN_IF_ERROR(s->LoadState(saved));
    }
    return Status::Ok();
  });
  RETURN_IF_ERROR(loaded);
  engine_.set_totals({ckpt->bytes_up, ckpt->bytes_down});
  engine_.set_global(global);
  restored_metrics_line_ = std::move(ckpt->metrics_line);
  FP_LOG_INFO("coordinator",
              "resumed federation '{}' from checkpoint round {} (adapter "
              "digest {}); next round {}",
              config.federation.id, ckpt->round, TensorDigest(*global),
              ckpt->round + 1);
  return ckpt->round;
}

Status CheckpointStore::Save(int64_t round, const std::string& metrics_line) {
  const CoordinatorConfig& config = engine_.config();
  Checkpoint ckpt;
  ckpt.round = round;
  ckpt.federation_id = config.federation.id;
  ckpt.rng_state = engine_.RngState();
  ckpt.strategy = engine_.merge().strategy_name();
  ckpt.base_model = config.model.path;
  ckpt.adapter_config = engine_.adapter_config();
  std::shared_ptr<const TensorMap> global = engine_.global();
  const AdapterPlanner& planner = *engine_.stages().planner;
  if (planner.stack()) {
    ckpt.adapter_config = peft::AdapterConfigToJson(planner.OptionsFor(*global),
                                                    config.model.path);
  }
  ckpt.strategy_state = engine_.merge().StrategyState();
  engine_.WithRegistry([&](Registry&) {
    for (const RoundStage* s : engine_.stages().order) {
      s->SaveState(&ckpt.extra);
    }
    return 0;
  });
  ckpt.global = *global;
  const RoundEngine::Totals totals = engine_.totals();
  ckpt.bytes_up = totals.up;
  ckpt.bytes_down = totals.down;
  ckpt.metrics_line = metrics_line;
  return SaveCheckpoint(options_.dir, ckpt, options_.keep);
}

}  // namespace coordinator
}  // namespace fedpeft
