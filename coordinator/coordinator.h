// The coordinator: schedules federated rounds over the workers that
// registered, merges their updates with a Strategy, checkpoints and logs.
// It knows nothing of gRPC: coordinator/service.h decodes messages and calls
// the thread-safe handler methods below.
//
// Round lifecycle (one thread runs Run(); it alone moves the state):
//
//   wait_workers ─▶ select ─▶ broadcast ─▶ collect ─▶ aggregate ─▶ evaluate
//        ▲                                    │            ─▶ checkpoint ─▶ log
//        │                 quorum missed:     │                              │
//        │                 retry or skip ◀────┘              next round ◀────┘
//   done: every GetTask answers SHUTDOWN for shutdown_grace_s, then Run()
//   returns.
//
// collect ends when every selected worker answered (an upload, accepted or
// rejected) or is no longer alive, or at the deadline. With at least
// ceil(quorum * selected) accepted updates the round aggregates; otherwise it
// is retried (up to max_retries) or skipped as configured. Uploads for
// another round, after the round closed, from an unselected worker, or a
// second one from the same worker are rejected with a logged reason.
//
// Thread-safety: every public method is safe from any thread (one mutex
// guards all state; handlers never block on I/O while holding it).
#ifndef FEDPEFT_COORDINATOR_COORDINATOR_H_
#define FEDPEFT_COORDINATOR_COORDINATOR_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "aggregation/strategy.h"
#include "common/status.h"
#include "coordinator/checkpoint.h"
#include "coordinator/coordinator_config.h"
#include "model/llama.h"
#include "peft/peft_model.h"

namespace fedpeft {
namespace coordinator {

struct WorkerProfile {
  std::string worker_id;
  int threads = 0;
  uint64_t ram_bytes = 0;
  double tokens_per_second = 0;
  double uplink_bytes_per_second = 0;
  uint64_t num_samples = 0;
  std::string version;
};

struct Registration {
  std::string session_id;
  std::string federation_id;
  int heartbeat_interval_ms = 0;
  std::string adapter_config_json;  // PEFT adapter_config.json text
  std::string base_model;
};

struct TaskInfo {
  enum class Kind { kWait, kTrain, kShutdown };
  Kind kind = Kind::kWait;
  int64_t round = 0;
  LocalTrainSpec train;
  uint64_t seed = 0;
  uint64_t deadline_unix_ms = 0;
  std::string message;
};

struct UpdateHeader {
  int64_t round = 0;
  uint64_t num_samples = 0;
  double train_loss = 0;
  double eval_loss = 0;  // NaN = not reported
  uint64_t eval_tokens = 0;
  double train_seconds = 0;
  double tokens_per_second = 0;
};

struct RoundMetrics {
  int64_t round = 0;
  int attempt = 0;
  int selected = 0;
  int answered = 0;  // accepted updates
  int dropped = 0;   // selected - answered
  int rejected = 0;
  double train_loss = 0;        // sample-weighted mean of accepted updates
  double eval_loss = 0;         // eval-token-weighted mean reported by workers
  double server_eval_loss = 0;  // NaN when no server-side eval
  uint64_t bytes_up = 0;
  uint64_t bytes_down = 0;
  double seconds = 0;
  double max_train_seconds = 0;  // slowest accepted worker's compute time
  bool aggregated = false;
};

struct CoordinatorStatus {
  std::string federation_id;
  std::string state;
  int64_t round = 0;
  int64_t total_rounds = 0;
  int selected = 0;
  int answered = 0;
  double last_train_loss = 0;
  double last_eval_loss = 0;
  uint64_t bytes_up = 0;
  uint64_t bytes_down = 0;
  std::string strategy;
  double uptime_seconds = 0;
  struct Worker {
    std::string worker_id;
    bool alive = false;
    uint64_t rounds_completed = 0;
    uint64_t last_seen_ms_ago = 0;
  };
  std::vector<Worker> workers;
};

class Coordinator {
 public:
  // Loads the base model, builds the initial global adapter (or resumes from
  // the latest checkpoint in config.checkpoint.dir), the strategy, and the
  // metrics file.
  static StatusOr<std::unique_ptr<Coordinator>> Create(
      const CoordinatorConfig& config);
  ~Coordinator();

  // ---- handlers (thread-safe) -------------------------------------------
  StatusOr<Registration> Register(const WorkerProfile& profile);
  // NotFound for an unknown session (the worker should re-register).
  StatusOr<int64_t> Heartbeat(const std::string& session_id);
  // Long poll: returns as soon as there is a task for this worker, or after
  // `wait` with kWait.
  StatusOr<TaskInfo> GetTask(const std::string& session_id,
                             std::chrono::milliseconds wait);
  // The global adapter the worker must train on in `round` (aliased,
  // immutable). FailedPrecondition when the round is not open to it.
  StatusOr<std::shared_ptr<const TensorMap>> GlobalAdapter(
      const std::string& session_id, int64_t round);
  // Name -> shape of the global adapter: what uploads must match.
  const TensorMap& AdapterTemplate() const { return *template_; }
  // Checks that an upload may start (session known, round open, worker
  // selected, not answered yet) before its tensors are read.
  Status CheckUploadAllowed(const std::string& session_id, int64_t round);
  // Takes a decoded update; validates and queues it for the round. A
  // rejection is logged with its reason and counted.
  Status SubmitUpdate(const std::string& session_id, const UpdateHeader& header,
                      TensorMap delta, uint64_t bytes_received);
  // Counts an upload that failed before SubmitUpdate (e.g. bad encoding).
  void RecordRejectedUpload(const std::string& session_id, int64_t round,
                            const std::string& reason, uint64_t bytes);
  void AddBytesDown(uint64_t bytes);
  CoordinatorStatus GetStatus();
  uint64_t max_update_bytes() const;

  // ---- the round loop ----------------------------------------------------
  // Runs every remaining round; returns when done (after the shutdown
  // grace) or after Stop(). Not reentrant.
  Status Run();
  // Asks Run() to return soon; safe from a signal-handling thread.
  void Stop();

  const CoordinatorConfig& config() const { return config_; }
  int64_t completed_rounds() const { return completed_rounds_; }
  // The metrics of every round this process ran.
  std::vector<RoundMetrics> History();

 private:
  struct WorkerEntry {
    WorkerProfile profile;
    std::string session_id;
    std::chrono::steady_clock::time_point last_seen;
    uint64_t rounds_completed = 0;
  };
  struct Pending {
    std::string worker_id;
    UpdateHeader header;
    TensorMap delta;
  };
  enum class Phase { kWaitWorkers, kCollect, kAggregate, kDone };

  explicit Coordinator(const CoordinatorConfig& config);
  Status Init();

  // REQUIRES: mu_ held.
  WorkerEntry* FindSession(const std::string& session_id);
  bool IsAlive(const WorkerEntry& w,
               std::chrono::steady_clock::time_point now) const;
  std::vector<std::string> AliveWorkers() const;
  const char* PhaseName() const;

  // Runs one attempt of `round`; fills `metrics`. Returns false when the
  // quorum was missed.
  bool RunRoundAttempt(int64_t round, int attempt, RoundMetrics* metrics);
  Status Aggregate(int64_t round, std::vector<Pending> updates,
                   RoundMetrics* metrics);
  double ServerEval();
  Status WriteCheckpoint(int64_t round);
  void LogRound(const RoundMetrics& m);
  bool WaitForWorkers();

  const CoordinatorConfig config_;
  std::shared_ptr<const model::LlamaWeights> base_;
  std::unique_ptr<aggregation::Strategy> strategy_;
  std::shared_ptr<const TensorMap> template_;  // zeros: names and shapes
  std::string adapter_config_json_;
  nlohmann::json adapter_config_;
  std::unique_ptr<peft::PeftModel> eval_model_;  // server-side eval
  std::vector<data::Example> eval_examples_;
  std::ofstream metrics_;
  const std::chrono::steady_clock::time_point start_time_;

  std::mutex mu_;
  std::condition_variable cv_;  // any state change: tasks, updates, stop
  std::map<std::string, WorkerEntry> workers_;   // GUARDED_BY(mu_)
  std::map<std::string, std::string> sessions_;  // session -> worker id
  std::shared_ptr<const TensorMap> global_;      // GUARDED_BY(mu_)
  Phase phase_ = Phase::kWaitWorkers;            // GUARDED_BY(mu_)
  int64_t round_ = 0;               // current round  GUARDED_BY(mu_)
  int attempt_ = 0;                 // GUARDED_BY(mu_)
  uint64_t round_seed_ = 0;         // GUARDED_BY(mu_)
  std::set<std::string> selected_;  // GUARDED_BY(mu_)
  std::set<std::string> answered_;  // GUARDED_BY(mu_)
  std::vector<Pending> pending_;    // GUARDED_BY(mu_)
  int rejected_ = 0;                // GUARDED_BY(mu_)
  uint64_t deadline_unix_ms_ = 0;   // GUARDED_BY(mu_)
  uint64_t round_bytes_up_ = 0, round_bytes_down_ = 0;  // GUARDED_BY(mu_)
  uint64_t total_bytes_up_ = 0, total_bytes_down_ = 0;  // GUARDED_BY(mu_)
  std::vector<RoundMetrics> history_;                   // GUARDED_BY(mu_)
  std::set<std::string> told_shutdown_;                 // GUARDED_BY(mu_)
  std::mt19937_64 rng_;                                 // round loop only
  int64_t completed_rounds_ = 0;                        // round loop only
  bool started_ = false;  // min_available was met  // GUARDED_BY(mu_)
  std::atomic<bool> stop_{false};
  uint64_t next_session_ = 1;  // GUARDED_BY(mu_)
};

// Milliseconds since the Unix epoch.
uint64_t UnixMillis();

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_COORDINATOR_H_
