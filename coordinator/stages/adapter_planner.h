// The adapter planner: what each participant trains and receives.
//
// - Heterogeneous ranks (heterogeneity.*): a worker's rank from its profile
//   at registration (peft/rank_assignment.h), moved after every round by
//   what it did; the ranks a round assigned, for its uploads and metrics.
// - Freezing: APF's frozen tensors per round (peft/freezing.h, cloud), or
//   the cloud's frozen set at an edge; FFA-LoRA (only lora_B trains).
// - Cached downloads: the round each tensor last changed, so a download
//   leaves out what a worker's cached copy already holds.
// - The local training each task asks for.
//
// Thread-safety: the engine calls it under its mutex (see round_stage.h),
// except the methods marked "round loop", which only the engine's round
// thread calls.
#ifndef FEDPEFT_COORDINATOR_STAGES_ADAPTER_PLANNER_H_
#define FEDPEFT_COORDINATOR_STAGES_ADAPTER_PLANNER_H_

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "aggregation/hetero_rank.h"
#include "coordinator/edge_plan.h"
#include "coordinator/stages/round_stage.h"
#include "peft/freezing.h"
#include "peft/peft_model.h"
#include "peft/rank_assignment.h"

namespace fedpeft {
namespace coordinator {

class AdapterPlanner : public RoundStage {
 public:
  // `template_adapter`: the global adapter's names and shapes (zeros);
  // `model`: the base's dimensions, for memory and compute estimates.
  // `upstream_frozen`: an edge, whose frozen set comes from the cloud.
  static StatusOr<std::unique_ptr<AdapterPlanner>> Create(
      const CoordinatorConfig& config, const model::LlamaConfig& model,
      std::shared_ptr<const TensorMap> template_adapter, Registry* registry,
      bool upstream_frozen);

  const char* name() const override { return "adapter_planner"; }
  void OnRegister(Participant& p) override;
  void OnOpen(RoundContext& round, RoundMetrics* m) override;
  void FillTask(const RoundContext& round, const Participant& p,
                TaskInfo* task) const override;
  void OnClose(RoundContext& round, std::unique_lock<std::mutex>& lock,
               std::vector<Update>* updates, RoundMetrics* m) override;
  void SaveState(nlohmann::json* extra) const override;
  Status LoadState(const SavedState& saved) override;

  // The rank `p` trains; 0 = the global's shapes.
  int64_t RankOf(const Participant& p) const;
  // The rank this round assigned to `id` (RankOf when it was not selected).
  int64_t RoundRank(const Participant& p) const;
  // What an upload at `header`'s rank from `id` may carry, given the global
  // adapter (tensors by name and shape; `frozen` refused).
  StatusOr<UploadExpectation> Expect(const std::string& id,
                                     const UpdateHeader& header,
                                     const TensorMap& global,
                                     int64_t assigned_rank) const;
  // A download: the leading `rank` components of `global` (0: all), without
  // the tensors unchanged since `cached_round` (0: none cached) according
  // to `last_changed`. Pure; callable without the lock.
  static std::shared_ptr<const TensorMap> View(
      std::shared_ptr<const TensorMap> global, int64_t rank,
      uint64_t cached_round, const std::map<std::string, int64_t>& changed);
  const std::map<std::string, int64_t>& last_changed() const {
    return last_changed_;
  }
  const std::set<std::string>& frozen() const { return frozen_; }
  bool ffa() const { return ffa_; }
  const std::optional<aggregation::HeteroOptions>& hetero() const {
    return hetero_;
  }
  bool stack() const {
    return hetero_ && hetero_->method == aggregation::HeteroMethod::kStack;
  }

  // After the merge: frozen tensors kept exactly as they were in `current`
  // (a server optimizer's momentum would otherwise still move them).
  void KeepFrozen(const TensorMap& current, TensorMap* next) const;
  // The round's result accepted (round loop): APF is fed what it changed.
  // Returns the keys that changed.
  std::vector<std::string> Settle(int64_t round, const TensorMap& current,
                                  const TensorMap& next);
  // Records `keys` as changed in `round` (downloads stop leaving them out).
  void MarkChanged(const std::vector<std::string>& keys, int64_t round);

  // An edge takes a cloud task: tensors the cloud changed count as changed
  // in `round` (its workers' caches drop them); frozen set, training, FFA
  // and pruning come from the task.
  void BeginUpstreamTask(const TensorMap& previous, const TensorMap& cloud,
                         int64_t round, const EdgeTask& task);

  // The PEFT options that describe `adapter` (per-module ranks and alphas
  // when a heterogeneous merge left them different from peft.lora.r).
  peft::PeftOptions OptionsFor(const TensorMap& adapter) const;
  const LocalTrainSpec& train() const { return train_; }

 private:
  AdapterPlanner(const CoordinatorConfig& config,
                 const model::LlamaConfig& model,
                 std::shared_ptr<const TensorMap> template_adapter,
                 Registry* registry, bool upstream_frozen);
  peft::AdapterCost CostFor(const WorkerProfile& p) const;
  // Re-assigns the ranks of this round's workers from what they did.
  void UpdateRanks(const std::vector<Update>& answered, double deadline_s);

  const HeterogeneityOptions heterogeneity_;
  const peft::PeftOptions peft_;
  const model::LlamaConfig model_;
  const std::shared_ptr<const TensorMap> template_;
  const double default_deadline_s_;
  const int edge_rounds_;  // hierarchy.edge_rounds, told to edges
  const bool upstream_frozen_;
  Registry* const registry_;
  std::optional<aggregation::HeteroOptions> hetero_;
  std::unique_ptr<peft::ApfController> apf_;  // round loop
  bool ffa_ = false;
  double prune_threshold_ = 0;
  LocalTrainSpec train_;
  std::set<std::string> frozen_;                 // this round's
  std::map<std::string, int64_t> last_changed_;  // key -> round
  std::map<std::string, int64_t> round_ranks_;   // selected -> rank
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_STAGES_ADAPTER_PLANNER_H_
