// The cloud coordinator: a round engine (round_engine.h) for the
// participants that registered with it — workers, edges, or both — driven
// round after round with the cloud's own duties around it: the privacy
// budget, checkpoints after every round (checkpoint_store.h) and the round
// log (round_log.h).
//
//   for each round: wait_workers ─▶ [dp: init, budget] ─▶ RunRound
//     ─▶ quorum missed: retry (on_quorum_miss) or skip
//     ─▶ checkpoint ─▶ log ─▶ next round
//   done: every GetTask answers SHUTDOWN for shutdown_grace_s, then Run()
//   returns.
//
// An edge runs the same engine as a client of the cloud (edge.h,
// edge_rounds.h); nothing here is edge-specific.
//
// Thread-safety: Run() on one thread; Stop(), History() and the engine's
// handlers from any thread.
#ifndef FEDPEFT_COORDINATOR_COORDINATOR_H_
#define FEDPEFT_COORDINATOR_COORDINATOR_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "common/status.h"
#include "coordinator/checkpoint_store.h"
#include "coordinator/coordinator_config.h"
#include "coordinator/round_engine.h"
#include "coordinator/round_log.h"
#include "delivery/model_source.h"

namespace fedpeft {
namespace coordinator {

class Coordinator {
 public:
  // Loads the base model, builds the initial global adapter (or resumes from
  // the latest checkpoint in config.checkpoint.dir), the stages, and the
  // metrics file. `base`: the model config.model describes, when the caller
  // already holds it (RoundEngine::Create).
  static StatusOr<std::unique_ptr<Coordinator>> Create(
      const CoordinatorConfig& config,
      std::shared_ptr<const model::LlamaWeights> base = nullptr);
  ~Coordinator();

  // What the gRPC service serves (service.h).
  RoundEngine& engine() { return *engine_; }
  // The base model it delivers to edges and workers that fetch it
  // (model.source upstream on their side): model.path in blocks of
  // model.block_size, hashed on the first request.
  delivery::ModelSource& model_source() { return *model_source_; }

  // Runs every remaining round; returns when done (after the shutdown
  // grace) or after Stop(). Not reentrant.
  Status Run();
  // Asks Run() to return soon; safe from a signal-handling thread.
  void Stop() { engine_->Stop(); }

  const CoordinatorConfig& config() const { return engine_->config(); }
  int64_t completed_rounds() const { return completed_rounds_; }
  // The metrics of every round this process ran.
  std::vector<RoundMetrics> History() { return engine_->History(); }

 private:
  Coordinator() = default;
  // Whether the privacy budget allows round `round` (logs when not).
  bool BudgetAllows(int64_t round);

  std::unique_ptr<RoundEngine> engine_;
  std::unique_ptr<delivery::LocalModelSource> model_source_;
  std::unique_ptr<CheckpointStore> checkpoints_;
  std::unique_ptr<RoundLog> log_;
  int64_t completed_rounds_ = 0;  // round loop only
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_COORDINATOR_H_
