// The secure-sum stage: Bonawitz et al. 2017 (security/secagg.h) over the
// workers a round selected, so the server that collects their uploads (an
// edge, or the cloud for its direct workers) learns only their sum.
//
//   open    ─▶ a session over the selected workers (not edges; none with
//              fewer than 2): n, t, the masked tensors, the fixed-point unit
//   SecAgg ADVERTISE, SHARE_KEYS ─▶ Exchange(); OnTick closes each step when
//              everyone answered or its setup time is up
//   upload  ─▶ Flatten() + Receive(): masked words, never values
//   close   ─▶ UNMASK: the survivors' shares rebuild the sum outside the
//              engine's lock; one Update (summed) replaces the masked ones
//
// Thread-safety: every method but Flatten is called under the engine's
// mutex (round_stage.h); OnClose releases it while it unmasks.
#ifndef FEDPEFT_COORDINATOR_STAGES_SECURE_SUM_H_
#define FEDPEFT_COORDINATOR_STAGES_SECURE_SUM_H_

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "coordinator/stages/round_stage.h"
#include "security/secagg.h"

namespace fedpeft {
namespace coordinator {

class SecureSumStage : public RoundStage {
 public:
  // `template_adapter`: the global adapter's names and shapes (what is
  // masked, and how the sum decodes).
  SecureSumStage(const SecAggOptions& options,
                 std::shared_ptr<const TensorMap> template_adapter);
  ~SecureSumStage() override;

  const char* name() const override { return "secure_sum"; }
  void OnOpen(RoundContext& round, RoundMetrics* m) override;
  void FillTask(const RoundContext& round, const Participant& p,
                TaskInfo* task) const override;
  void OnTick(RoundContext& round, Clock::time_point now) override;
  void OnClose(RoundContext& round, std::unique_lock<std::mutex>& lock,
               std::vector<Update>* updates, RoundMetrics* m) override;

  // The tensors `id` must upload masked this round; nullopt when its upload
  // is not masked.
  std::optional<std::vector<std::string>> MaskedNames(
      const std::string& id) const;
  // The words of a masked upload in session order, plus the masked
  // unclipped bit; refuses a wrong tensor set or header. No lock needed.
  static StatusOr<std::vector<uint32_t>> Flatten(
      const std::string& worker_id, const UpdateHeader& header,
      const TensorMap& words, const std::vector<std::string>& names);
  // Whether the round's session still takes `id`'s masked input.
  bool Accepting(const std::string& id) const;
  // Hands `id`'s masked input to the session. REQUIRES: Accepting(id).
  Status Receive(const std::string& id, std::vector<uint32_t> flat);
  // One step of the exchange for `id` (see RoundEngine::SecAggExchange):
  // takes `message` when not empty, then waits on round.changed (releasing
  // `lock`) until `until` for the step's result.
  StatusOr<SecAggResult> Exchange(RoundContext& round,
                                  std::unique_lock<std::mutex>& lock,
                                  const std::string& id, int64_t for_round,
                                  SecAggStep step, const std::string& message,
                                  Clock::time_point until);

 private:
  struct Session;
  void Start(RoundContext& round);
  void Finish(RoundContext& round, std::unique_lock<std::mutex>& lock,
              std::vector<Update>* updates);

  const SecAggOptions options_;
  const std::shared_ptr<const TensorMap> template_;
  std::unique_ptr<Session> session_;  // this round's; null: none
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_STAGES_SECURE_SUM_H_
