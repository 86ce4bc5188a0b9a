// The privacy stage: user-level DP-FedAvg (McMahan et al. 2018) around the
// round (security/dp.h, security/rdp_accountant.h).
//
//   open  ─▶ the round's clip norm C and noise (cloud: from z and the
//            budget; edge: from the cloud's task) ─▶ tasks carry C, and
//            edges their noise shares (placement: edges)
//   upload ─▶ a worker's update over C is refused (never rescaled); an
//            edge's header must be consistent
//   close ─▶ (cloud) the accountant composes the round at q; adaptive
//            clipping moves C from the noised unclipped count
//   merge ─▶ Mean(): the sum of clipped updates plus this level's share of
//            N(0, z²C²), divided by the users in it
//
// Thread-safety: the engine calls the hooks under its mutex (round_stage.h);
// CheckUpdate reads the round's parameters under this stage's own mutex.
// Init, WouldOverspend and Mean are for the round loop only.
#ifndef FEDPEFT_COORDINATOR_STAGES_PRIVACY_H_
#define FEDPEFT_COORDINATOR_STAGES_PRIVACY_H_

#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "aggregation/hetero_rank.h"
#include "coordinator/edge_plan.h"
#include "coordinator/stages/round_stage.h"
#include "security/dp.h"
#include "security/rdp_accountant.h"

namespace fedpeft {
namespace coordinator {

class PrivacyStage : public RoundStage {
 public:
  // `cloud`: the accountant, calibration and adaptive clipping live here;
  // otherwise (an edge) each round's parameters come from the cloud's task.
  // Noise comes from OpenSSL's DRBG unless the cloud has a dp.noise_seed
  // (experiments), which it derives per round and attempt; edges never get
  // a seed.
  PrivacyStage(const CoordinatorConfig& config, bool cloud);

  const char* name() const override { return "privacy"; }
  void OnOpen(RoundContext& round, RoundMetrics* m) override;
  void FillTask(const RoundContext& round, const Participant& p,
                TaskInfo* task) const override;
  Status CheckUpdate(const UpdateCheck& u) const override;
  void OnClose(RoundContext& round, std::unique_lock<std::mutex>& lock,
               std::vector<Update>* updates, RoundMetrics* m) override;
  void SaveState(nlohmann::json* extra) const override;
  Status LoadState(const SavedState& saved) override;

  // Whether this round releases a DP mean.
  bool enabled() const;
  // Whether workers report nothing but their update (DP without
  // dp.report_worker_metrics): tasks say so, and the engine drops whatever
  // an upload's header says about the data anyway (Withhold).
  bool withholds_metrics() const {
    return options_.enabled && !options_.report_worker_metrics;
  }
  // Clears what `header` says about a user's data (losses, timings; a
  // worker's sample count becomes 1) and marks it withheld.
  static void Withhold(bool edge, UpdateHeader* header);
  // Cloud, before round 1 (no-op once done or resumed): δ from the
  // population, z calibrated to the budget, the count noise of adaptive
  // clipping. `alive`: who is registered; `q`: the expected sampling rate.
  Status Init(const Registry::Counts& alive, double q);
  // Cloud: whether one more round at rate `q` would spend more than
  // dp.target_epsilon; *epsilon is what it would bring.
  bool WouldOverspend(double q, double* epsilon) const;
  // An edge takes the cloud's task: C and the noise shares of its rounds.
  Status BeginUpstreamTask(const EdgeTask& task);
  // DP-FedAvg: the noised mean of the clipped updates over every
  // coordinate that may change (not `frozen`, not lora_A under `ffa`), as
  // one update. A lower-rank update is zero-padded to the global's rank.
  StatusOr<TensorMap> Mean(const TensorMap& current,
                           const std::set<std::string>& frozen, bool ffa,
                           bool hetero, const std::vector<Update>& updates,
                           const char* label, RoundMetrics* m);

 private:
  // This round's parameters (see dp.h).
  struct RoundDp {
    bool enabled = false;
    double clip_norm = 0;         // C
    double z_update = 0;          // noise multiplier of the update
    double sum_stddev = 0;        // total noise on the sum of clipped updates
    double count_stddev = 0;      // total noise on the unclipped count
    double edge_share = 0;        // what each selected edge adds (placement
    double edge_count_share = 0;  // edges); the cloud adds the rest
    int64_t edge_user_cap = 0;    // most users an edge may declare; 0 = any
  };
  RoundDp Current() const;
  // After a round (cloud): the accountant, adaptive clipping, the metrics.
  void Account(const std::vector<Update>& updates, int64_t round,
               RoundMetrics* m);
  // The noised count of unclipped updates among `updates` (the edges'
  // noise shares plus what this level adds) and the users behind them.
  double NoisedUnclippedCount(const std::vector<Update>& updates,
                              double* users);
  // The sampling rate q of a round: the largest chance any one user had of
  // taking part, from the population at selection (see Account); and in
  // `cloud_q` the same chance as the cloud sees it, which knows the edges
  // it selected (1 unless edges' own sampling is trusted).
  double SamplingRate(const std::vector<Update>& updates,
                      double* cloud_q) const;

  // Who could take part, and who was selected, when the round selected.
  struct Selection {
    int direct_alive = 0, direct_selected = 0;
    int edges_alive = 0, edges_selected = 0;
  };

  const DpOptions options_;
  const FederationOptions federation_;
  const bool cloud_;
  std::unique_ptr<privacy::RdpAccountant> accountant_;  // cloud with DP
  // Against the cloud itself (placement edges): each edge's release is
  // noised by its share only, z/sqrt(E); with central placement, or when
  // the cloud sees a worker's update or an edge's un-noised sum, it is
  // unbounded.
  std::unique_ptr<privacy::RdpAccountant> cloud_accountant_;
  bool cloud_unbounded_ = false;
  Selection selection_;  // the round's, set in OnOpen
  std::unique_ptr<privacy::GaussianNoise> noise_;
  double clip_norm_ = 0;  // adaptive
  double z_ = 0;          // total noise multiplier (calibrated)
  double delta_ = 0;
  double count_stddev_ = 0;  // adaptive clipping: noise on the count
  int64_t population_ = 0;
  bool ready_ = false;
  mutable std::mutex mu_;
  RoundDp round_;  // GUARDED_BY(mu_)
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_STAGES_PRIVACY_H_
