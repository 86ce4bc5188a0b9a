// Round stages: the parts of a round that are not the state machine itself.
// The round engine (coordinator/round_engine.h) selects, broadcasts,
// collects and commits; at each step it calls every stage of its pipeline,
// in order, through this one interface (in the spirit of Flower's strategy
// wrappers: privacy and secure aggregation wrap the round, they are not
// branches inside it).
//
//   register ─▶ OnRegister                     (a participant joined)
//   select   ─▶ OnOpen                         (the round's shape: frozen
//                                               tensors, ranks, DP, SecAgg)
//   task     ─▶ FillTask                       (per selected participant)
//   upload   ─▶ CheckUpdate                    (refuse, never rescale)
//   collect  ─▶ OnTick                         (while waiting for answers)
//   close    ─▶ OnClose                        (may replace the updates)
//   commit   ─▶ SaveState / LoadState          (checkpoint, cloud only)
//
// A new stage is a class in this folder implementing the hooks it needs,
// added to the pipeline in stages/pipeline.cc. Hooks run in pipeline order
// on the way in (OnRegister, OnOpen, FillTask, CheckUpdate, OnTick) and in
// reverse order on the way out (OnClose), so a stage wraps the ones after
// it: secure aggregation, the innermost, turns masked uploads into one sum
// before privacy accounts for it. Stages with a surface of
// their own (the secure-sum protocol's RPC, the planner's download view, the
// privacy stage's noised mean) also have typed methods the engine calls.
//
// Thread-safety: the engine calls every hook but CheckUpdate under its one
// mutex, so a stage's round state needs no lock of its own; CheckUpdate runs
// on a gRPC handler thread without that mutex and may read only what the
// stage guards itself.
#ifndef FEDPEFT_COORDINATOR_STAGES_ROUND_STAGE_H_
#define FEDPEFT_COORDINATOR_STAGES_ROUND_STAGE_H_

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/registry.h"
#include "coordinator/round_types.h"

namespace fedpeft {
namespace coordinator {

// The round in progress, owned by the engine. Stages read it and change
// what the comments say they may, under the engine's mutex.
struct RoundContext {
  int64_t round = 0;
  int attempt = 0;
  double deadline_s = 0;   // this round's collect limit
  const char* label = "";  // "round" (cloud) or "edge round" (in logs)
  const std::atomic<bool>* stop = nullptr;  // the engine is stopping
  std::set<std::string> selected;
  std::set<std::string> answered;  // answered, accepted or not
  int rejected = 0;
  Registry* registry = nullptr;
  std::condition_variable* changed = nullptr;  // wakes waiting handlers
  // Set by the planner in OnOpen: tensors frozen this round, and whether
  // every lora_A stays fixed (FFA-LoRA). Set by the privacy stage: the
  // round's DP clip norm (0: no DP this round).
  std::set<std::string> frozen;
  bool ffa = false;
  double clip_norm = 0;

  bool stopping() const { return stop && stop->load(); }

  // Counts `id` as answered and rejected: it sits the round out.
  void Reject(const std::string& id) {
    if (answered.insert(id).second) ++rejected;
  }
  // Selected participants that are edges, and that are not.
  Registry::Counts SelectedCounts() const {
    Registry::Counts c;
    for (const auto& id : selected) {
      const Participant* p = registry->Find(id);
      (p && p->profile.edge ? c.edges : c.direct) += 1;
    }
    return c;
  }
  void Notify() const {
    if (changed) changed->notify_all();
  }
};

// An upload about to be accepted, as CheckUpdate sees it.
struct UpdateCheck {
  const std::string& worker_id;
  bool edge;
  const UpdateHeader& header;
  const TensorMap& delta;
  const UploadExpectation& expected;  // what the planner said it may carry
};

// A checkpoint being resumed, as LoadState sees it.
struct SavedState {
  const nlohmann::json& extra;  // the checkpoint's `extra` object
  int64_t rounds_done = 0;
  const std::string& where;  // "checkpoint in '<dir>'", for messages
};

class RoundStage {
 public:
  virtual ~RoundStage() = default;
  virtual const char* name() const = 0;

  // A participant registered or re-registered.
  virtual void OnRegister(Participant& p) {}
  // The round's participants are chosen (round.selected); set up this
  // stage's part of the round and its metrics. May Reject() participants.
  virtual void OnOpen(RoundContext& round, RoundMetrics* m) {}
  // What the task of selected participant `p` says of this stage.
  virtual void FillTask(const RoundContext& round, const Participant& p,
                        TaskInfo* task) const {}
  // Refuses an update (with a reason naming the worker) or lets it pass.
  // Without the engine's mutex.
  virtual Status CheckUpdate(const UpdateCheck& u) const {
    return Status::Ok();
  }
  // Called while the engine waits for answers (at least every 250 ms).
  virtual void OnTick(RoundContext& round, Clock::time_point now) {}
  // The round's answers are in (`updates`, accepted ones); a stage may
  // replace them. `lock` holds the engine's mutex; a stage may release it
  // for long work and must hold it again when it returns.
  virtual void OnClose(RoundContext& round, std::unique_lock<std::mutex>& lock,
                       std::vector<Update>* updates, RoundMetrics* m) {}
  // State kept across a restart, in the checkpoint's `extra` object.
  virtual void SaveState(nlohmann::json* extra) const {}
  virtual Status LoadState(const SavedState& saved) { return Status::Ok(); }
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_STAGES_ROUND_STAGE_H_
