// An edge's rounds: the edge aggregator's round engine (round_engine.h) for
// its own workers, driven by the cloud's tasks (HierFAVG, Liu et al. 2020).
//
//   cloud task (κ, adapter) ─▶ BeginUpstreamTask ─▶ κ × RunRound, each
//   with its share of what is left of the cloud round's deadline (minus a
//   reserve for the upload) ─▶ EdgeResult: the edge's adapter and what went
//   into it
//
// Edge rounds are numbered from the cloud round, so a restarted edge never
// reuses a number its workers may still hold a task for. Nothing is
// checkpointed at an edge: the cloud holds the federation's state.
//
// Thread-safety: Run() and Finish() on one thread; the engine's handlers
// and Stop() from any thread.
#ifndef FEDPEFT_COORDINATOR_EDGE_ROUNDS_H_
#define FEDPEFT_COORDINATOR_EDGE_ROUNDS_H_

#include <memory>

#include "coordinator/edge_plan.h"
#include "coordinator/round_engine.h"
#include "coordinator/round_log.h"

namespace fedpeft {
namespace coordinator {

class EdgeRounds {
 public:
  // The edge's engine for `config` (its server, edge-round options, model
  // and the cloud's adapter config), set up as the cloud's `plan` says:
  // the rank merge, FFA-LoRA, the adapter seed, DP, compression and secure
  // aggregation; FedAvg between edge rounds, no APF or server-side eval.
  static StatusOr<std::unique_ptr<EdgeRounds>> Create(
      const CoordinatorConfig& config, const EdgePlan& plan);

  // What the edge's gRPC service serves.
  RoundEngine& engine() { return *engine_; }

  // Runs task.edge_rounds rounds with this edge's workers starting from the
  // cloud's adapter; returns the edge's adapter and what went into it.
  // Unavailable when stopped or when no edge round reached its quorum.
  StatusOr<EdgeResult> Run(const TensorMap& cloud_global, const EdgeTask& task);
  // Ends the edge: its workers get SHUTDOWN for up to shutdown_grace_s.
  void Finish() { engine_->Finish(); }
  void Stop() { engine_->Stop(); }

 private:
  EdgeRounds() = default;
  std::unique_ptr<RoundEngine> engine_;
  std::unique_ptr<RoundLog> log_;
  int64_t edge_round_ = 0;  // edge rounds run so far
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_EDGE_ROUNDS_H_
