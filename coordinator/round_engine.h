// The round engine: the state machine of federated rounds over the
// participants that registered with one server (the cloud coordinator, or
// an edge for its own workers). It knows nothing of gRPC:
// coordinator/service.h decodes messages and calls the thread-safe handlers
// below; a driver (coordinator.h for the cloud, edge_rounds.h for an edge)
// calls RunRound for each round it wants.
//
//   wait_workers ─▶ select ─▶ broadcast ─▶ collect ─▶ close ─▶ merge
//                  (OnOpen)   (FillTask)   (CheckUpdate, (OnClose) ─▶ evaluate
//                                           OnTick)
//
// Everything that is not the state machine is a round stage
// (stages/round_stage.h, in the order of stages/pipeline.cc): update
// validation, the adapter planner (ranks, freezing, cached downloads), the
// privacy stage (DP clip check, noise, accountant) and the secure sum; the
// merge (stages/merge.h) turns accepted updates into the next global.
//
// collect ends when every selected participant answered (an upload,
// accepted or rejected) or is no longer alive, or at the deadline. RunRound
// then reports whether ceil(quorum * selected) updates were accepted and,
// if so, merged. Uploads for another round, after the round closed, from an
// unselected participant, or a second one from the same, are rejected with
// a logged reason.
//
// Thread-safety: every handler is safe from any thread; one mutex guards
// the round state (stages included), and handlers never block on I/O while
// holding it. RunRound, Commit, WaitForWorkers and the other driver
// methods are called from one thread (the round loop).
#ifndef FEDPEFT_COORDINATOR_ROUND_ENGINE_H_
#define FEDPEFT_COORDINATOR_ROUND_ENGINE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/edge_plan.h"
#include "coordinator/registry.h"
#include "coordinator/round_types.h"
#include "coordinator/server_eval.h"
#include "coordinator/stages/merge.h"
#include "coordinator/stages/pipeline.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace coordinator {

class RoundEngine {
 public:
  // Loads the base model, builds the initial global adapter (PEFT's
  // initialisation from adapter_seed), the stages of `cloud`'s role and the
  // merge. Logs say "round N/total" for the cloud, "edge round N" else.
  // `base`, when given, is the model config.model describes, already
  // loaded (thread-mode simulation shares the workers' copy); otherwise it
  // is loaded from config.model.
  static StatusOr<std::unique_ptr<RoundEngine>> Create(
      const CoordinatorConfig& config, bool cloud,
      std::shared_ptr<const model::LlamaWeights> base = nullptr);
  ~RoundEngine();

  // ---- handlers (thread-safe) -------------------------------------------
  StatusOr<Registration> Register(const WorkerProfile& profile);
  // NotFound for an unknown session (the worker should re-register).
  StatusOr<int64_t> Heartbeat(const std::string& session_id);
  // Long poll: returns as soon as there is a task for this worker, or after
  // `wait` with kWait. An executor gets kUsers: the tasks of its users
  // selected this round, each handed out once.
  StatusOr<TaskInfo> GetTask(const std::string& session_id,
                             std::chrono::milliseconds wait);
  // The global adapter the worker must train on in `round`, at its rank;
  // with cached_round > 0, without the tensors unchanged since that round.
  // FailedPrecondition when the round is not open to it.
  StatusOr<std::shared_ptr<const TensorMap>> GlobalAdapter(
      const std::string& session_id, int64_t round, uint64_t cached_round = 0);
  // What the upload announced by `header` may carry; FailedPrecondition for
  // a rank the worker was not given.
  StatusOr<UploadExpectation> ExpectedUpload(const std::string& session_id,
                                             const UpdateHeader& header);
  // Name -> shape of the global adapter: what uploads must match.
  const TensorMap& AdapterTemplate() const { return *template_; }
  // Checks that an upload may start (session known, round open, worker
  // selected, not answered yet) before its tensors are read.
  Status CheckUploadAllowed(const std::string& session_id, int64_t round);
  // Takes a decoded update; the stages validate it, and it is queued for
  // the round. A rejection is logged with its reason and counted.
  // Under DP without dp.report_worker_metrics the header's losses, timings
  // and sample count are dropped first (privacy.h, Withhold).
  Status SubmitUpdate(const std::string& session_id,
                      const UpdateHeader& reported, TensorMap delta,
                      uint64_t bytes_received);
  // The participant id `session_id` was opened for; NotFound when unknown.
  StatusOr<std::string> SessionOwner(const std::string& session_id);
  // Closes the session of `worker_id` (its later calls get NOT_FOUND and it
  // must register again), marks it not alive so it is not selected, and
  // counts it as answered-and-rejected in an open round that selected it,
  // so the round goes on without waiting for it. Used when its certificate
  // name is revoked (security/tls.h). No-op for a name with no session.
  void Revoke(const std::string& worker_id, const std::string& reason);
  // One step of the secure aggregation of `round` for the worker of
  // `session_id`: hands over `message` (when not empty) and waits up to
  // `wait` for the step's result for it. FailedPrecondition when the
  // worker is not (or no longer) part of the round's aggregation;
  // InvalidArgument for a message the protocol refuses.
  StatusOr<SecAggResult> SecAggExchange(const std::string& session_id,
                                        int64_t round, SecAggStep step,
                                        const std::string& message,
                                        std::chrono::milliseconds wait);
  // Counts an upload that failed before SubmitUpdate (e.g. bad encoding).
  void RecordRejectedUpload(const std::string& session_id, int64_t round,
                            const std::string& reason, uint64_t bytes);
  void AddBytesDown(uint64_t bytes);
  CoordinatorStatus GetStatus();
  uint64_t max_update_bytes() const;
  // How the global adapter travels to workers (compression.download_bits),
  // the names its tensors are indexed by on the wire (nullptr when ranks
  // vary by module), and a seed for one download's stochastic rounding.
  transport::CodecOptions DownloadCodec();
  const transport::Schema* AdapterSchema() const;
  uint64_t NextCodecSeed();

  // ---- driving (the round loop's thread) ---------------------------------
  // Blocks until enough participants are alive to start a round
  // (min_available before the first, min_workers after); false on Stop().
  bool WaitForWorkers();
  // The same, giving up at `until`; false when the engine never started.
  // *alive and *needed say how many were there and how many it needed.
  bool WaitForWorkersUntil(Clock::time_point until, size_t* alive,
                           size_t* needed);
  // Runs one attempt of `round` with a collect limit of `deadline_s`;
  // fills `m`. Returns false when the quorum was missed (or stopped).
  bool RunRound(int64_t round, int attempt, double deadline_s, RoundMetrics* m);
  // Records a finished round (history, status) and waits for the next.
  void Commit(const RoundMetrics& m);
  // Ends the federation: every GetTask answers SHUTDOWN until every live
  // participant heard it or shutdown_grace_s passed.
  void Finish();
  // Asks the round loop to return soon; safe from a signal-handling thread.
  void Stop();
  bool stopped() const { return stop_; }

  // An edge takes a cloud task: the cloud's adapter becomes the global, and
  // the stages take the round parameters the task carries.
  Status BeginUpstreamTask(const TensorMap& cloud_global, const EdgeTask& task,
                           int64_t last_round);

  // ---- state, for drivers and the checkpoint store ------------------------
  const CoordinatorConfig& config() const { return config_; }
  std::shared_ptr<const model::LlamaWeights> base() const { return base_; }
  std::shared_ptr<const TensorMap> global();
  void set_global(std::shared_ptr<const TensorMap> global);
  const nlohmann::json& adapter_config() const { return adapter_config_; }
  // Alive participants (edges and not), and the share of them a round
  // selects: the sampling rate the accountant expects.
  Registry::Counts AliveCounts();
  double ExpectedSamplingRate();
  struct Totals {
    uint64_t up = 0, down = 0;
  };
  Totals totals();
  void set_totals(const Totals& t);
  // The selection generator (checkpointed so a resumed federation selects
  // as the uninterrupted one would).
  std::string RngState() const;
  Status SetRngState(const std::string& state);
  // The headers of the updates the last merged round took.
  const std::map<std::string, UpdateHeader>& last_round_headers() const {
    return last_round_headers_;
  }
  // The metrics of every round this process ran.
  std::vector<RoundMetrics> History();
  Pipeline& stages() { return pipeline_; }
  Merge& merge() { return *merge_; }
  // Runs `f(registry)` under the engine's mutex.
  template <typename F>
  auto WithRegistry(F f) {
    std::lock_guard<std::mutex> lock(mu_);
    return f(registry_);
  }

 private:
  enum class Phase { kWaitWorkers, kCollect, kAggregate, kDone };
  // The most users one executor may host, and the largest first index.
  static constexpr uint32_t kMaxHostedUsers = 10000000;

  RoundEngine(const CoordinatorConfig& config, bool cloud);
  Status Init();
  // `n` uniform 64-bit draws for a round's selection (round loop).
  std::vector<uint64_t> SelectionDraws(size_t n);
  Status Merged(int64_t round, std::vector<Update> updates, RoundMetrics* m);
  // SubmitUpdate for a masked upload (not under mu_).
  Status SubmitMasked(const std::string& session_id,
                      const std::string& worker_id, const UpdateHeader& header,
                      const TensorMap& words,
                      const std::vector<std::string>& names,
                      uint64_t bytes_received);
  // REQUIRES: mu_ held.
  const char* PhaseName() const;
  bool Collecting(const std::string& id) const;
  // The kTrain task of participant `w` in the open round.
  TaskInfo TrainTask(const Participant& w) const;
  void ShutdownGrace();

  CoordinatorConfig config_;
  const bool cloud_;
  const char* const label_;
  std::shared_ptr<const model::LlamaWeights> base_;
  std::shared_ptr<const TensorMap> template_;  // zeros: names and shapes
  std::shared_ptr<const TensorMap> init_;      // the initial global adapter
  transport::Schema schema_;                   // template_'s names
  std::string adapter_config_json_;
  nlohmann::json adapter_config_;
  Pipeline pipeline_;
  std::unique_ptr<Merge> merge_;
  std::unique_ptr<ServerEval> eval_;
  std::mt19937_64 codec_rng_;  // GUARDED_BY(codec_mu_)
  std::mutex codec_mu_;
  const std::chrono::steady_clock::time_point start_time_;

  std::mutex mu_;
  std::condition_variable cv_;  // any state change: tasks, updates, stop
  Registry registry_;           // GUARDED_BY(mu_)
  RoundContext round_;          // GUARDED_BY(mu_)
  std::shared_ptr<const TensorMap> global_;             // GUARDED_BY(mu_)
  Phase phase_ = Phase::kWaitWorkers;                   // GUARDED_BY(mu_)
  CompressionOptions compression_;                      // GUARDED_BY(mu_)
  uint64_t round_seed_ = 0;                             // GUARDED_BY(mu_)
  std::vector<Update> pending_;                         // GUARDED_BY(mu_)
  uint64_t deadline_unix_ms_ = 0;                       // GUARDED_BY(mu_)
  uint64_t round_bytes_up_ = 0, round_bytes_down_ = 0;  // GUARDED_BY(mu_)
  std::map<std::string, uint64_t> round_worker_bytes_;  // GUARDED_BY(mu_)
  Totals totals_;                                       // GUARDED_BY(mu_)
  std::vector<RoundMetrics> history_;                   // GUARDED_BY(mu_)
  std::set<std::string> told_shutdown_;                 // GUARDED_BY(mu_)
  // Virtual users whose task an executor took this round.
  std::set<std::string> dispatched_;  // GUARDED_BY(mu_)
  bool started_ = false;              // min_available was met  GUARDED_BY(mu_)
  std::map<std::string, UpdateHeader> last_round_headers_;  // round loop
  std::mt19937_64 rng_;                                     // round loop
  // Under DP without dp.noise_seed the selection is drawn from OpenSSL's
  // DRBG instead of rng_: sampling amplifies privacy only if nobody can
  // predict who is selected, and rng_ follows from federation.seed.
  bool secret_selection_ = false;
  std::atomic<bool> stop_{false};
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_ROUND_ENGINE_H_
