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
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "aggregation/hetero_rank.h"
#include "aggregation/strategy.h"
#include "common/status.h"
#include "coordinator/checkpoint.h"
#include "coordinator/coordinator_config.h"
#include "model/llama.h"
#include "peft/freezing.h"
#include "peft/peft_model.h"
#include "peft/rank_assignment.h"
#include "proto/tensor_codec.h"
#include "security/dp.h"
#include "security/rdp_accountant.h"
#include "security/secagg.h"

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
  bool edge = false;     // an edge aggregator (runs edge_rounds per task)
  uint32_t seq_len = 0;  // longest training sequence; 0 = unknown
};

struct Registration {
  std::string session_id;
  std::string federation_id;
  int heartbeat_interval_ms = 0;
  std::string adapter_config_json;  // PEFT adapter_config.json text
  std::string base_model;
  std::string plan_json;  // for edges: see EdgePlan
};

// What an edge needs to treat its workers as the cloud would: the merge of
// heterogeneous ranks, FFA-LoRA, and the adapter's initialisation seed.
struct EdgePlan {
  HeterogeneityOptions heterogeneity;
  bool ffa = false;
  uint64_t adapter_seed = 42;
  bool dp = false;             // sum clipped updates with equal weights
  uint64_t dp_noise_seed = 0;  // 0 = std::random_device
  CompressionOptions compression;
  SecAggOptions secagg;  // run by the edge with its workers
  std::string ToJson() const;
  static StatusOr<EdgePlan> FromJson(const std::string& text);
};

// A worker's part in the secure aggregation of a round (proto SecAggTask).
struct SecAggTaskInfo {
  uint64_t session_id = 0;
  uint32_t num_clients = 0;
  uint32_t threshold = 0;
  uint32_t index = 0;  // this worker's client id
  double scale = 0;    // fixed-point unit
  uint64_t vector_length = 0;
  std::vector<std::string> tensors;  // masked, sorted
};

struct TaskInfo {
  enum class Kind { kWait, kTrain, kShutdown };
  Kind kind = Kind::kWait;
  int64_t round = 0;
  LocalTrainSpec train;
  uint64_t seed = 0;
  uint64_t deadline_unix_ms = 0;
  std::string message;
  int64_t rank = 0;  // LoRA rank to train; 0 = the registered config's
  std::vector<std::string> frozen;  // adapter tensors frozen this round
  int edge_rounds = 0;              // edges only
  bool train_b_only = false;        // FFA-LoRA
  double prune_threshold = 0;
  double clip_norm = 0;                  // DP: clip updates to this; 0 = off
  CompressionOptions compression;        // how to upload
  double noise_stddev = 0;               // edges, dp.placement edges: noise on
  double count_noise_stddev = 0;         // their sum and unclipped count
  std::optional<SecAggTaskInfo> secagg;  // the round masks its uploads
};

// The steps of the secure-aggregation exchange (proto SecAggRequest).
enum class SecAggStep { kAdvertise, kShareKeys, kUnmask };
struct SecAggResult {
  bool ready = false;   // false: not yet, ask again
  std::string message;  // the step's result (secagg_messages.h bytes)
};

struct UpdateHeader {
  int64_t round = 0;
  uint64_t num_samples = 0;
  double train_loss = 0;
  double eval_loss = 0;  // NaN = not reported
  uint64_t eval_tokens = 0;
  double train_seconds = 0;
  double tokens_per_second = 0;
  int64_t rank = 0;            // rank of the tensors; 0 = the global's shapes
  bool whole_adapter = false;  // the tensors are an adapter, not a delta
  uint32_t workers = 0;        // edges: workers merged in
  uint32_t edge_rounds = 0;    // edges: edge rounds run
  uint32_t rank_min = 0, rank_max = 0;  // edges: ranks of their workers
  double rank_mean = 0;
  double unclipped = 0;  // DP: 1 if not clipped; edges: the noised count
  uint32_t users_selected = 0, users_alive = 0;  // edges: last round's
  uint32_t masked_unclipped = 0;  // secure aggregation: the masked bit
};

// What a participant may upload for a round: the tensor specs when they are
// known in advance (any subset of them), nullopt when only the decoded
// tensors can be checked (whole adapters of variable rank).
struct UploadExpectation {
  // Every tensor of the adapter at the upload's rank (the names tensors are
  // indexed by on the wire); those in `excluded` (frozen this round) are
  // refused once decoded.
  std::optional<std::map<std::string, transport::TensorSpec>> specs;
  std::set<std::string> excluded;
  size_t max_tensors = 0;
  // Secure aggregation: the upload is masked (CODEC_MASKED) and must carry
  // exactly these tensors.
  bool masked = false;
  std::vector<std::string> masked_names;
};

// One cloud task as an edge runs it (Coordinator::RunEdgeRounds).
struct EdgeTask {
  int64_t cloud_round = 0;
  int edge_rounds = 1;
  LocalTrainSpec train;
  uint64_t seed = 0;
  uint64_t deadline_unix_ms = 0;  // the cloud round's; 0 = none
  std::vector<std::string> frozen;
  bool train_b_only = false;
  double prune_threshold = 0;
  double clip_norm = 0;  // DP (from the cloud's task)
  double noise_stddev = 0;
  double count_noise_stddev = 0;
  CompressionOptions compression;
};

struct EdgeResult {
  TensorMap adapter;         // the edge's adapter after its rounds
  uint64_t num_samples = 0;  // samples of the workers merged in
  double train_loss = 0;     // sample-weighted
  double eval_loss = 0;      // eval-token-weighted; NaN = none
  uint64_t eval_tokens = 0;
  double train_seconds = 0;  // the edge rounds' wall time
  int workers = 0;           // distinct workers merged in
  int rounds_aggregated = 0;
  int64_t rank_min = 0, rank_max = 0;
  double rank_mean = 0;
  double unclipped = 0;  // DP: noised count of unclipped updates
  int users_selected = 0, users_alive = 0;  // of the last edge round
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
  int edges_answered = 0;  // accepted updates that came from edges
  int64_t rank_min = 0;    // LoRA ranks assigned this round (behind edges:
  int64_t rank_max = 0;    // the ranks the edges assigned)
  double rank_mean = 0;
  double frozen_fraction = 0;  // share of adapter tensors frozen
  int users_alive = 0;         // workers (behind edges: their users) that
                               // could have been selected
  // DP (NaN / 0 when off): privacy spent after this round at `delta`, the
  // clip norm and update noise multiplier used, the noised share of
  // updates that were not clipped.
  double epsilon = std::nan("");
  double delta = std::nan("");
  double clip_norm = 0;
  double noise_multiplier = 0;
  double unclipped_fraction = std::nan("");
  double unclipped_count = std::nan("");  // noised
  double sampling_rate = 0;               // q accounted for this round
  // Secure aggregation: the masked updates whose sum was recovered (0 when
  // it failed); -1 when the round ran none.
  int secagg_workers = -1;
  std::map<std::string, uint64_t> worker_bytes_up;  // accepted uploads
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
  // An edge aggregator's round engine: the same handlers and rounds, but
  // the global adapter comes from the cloud (RunEdgeRounds), nothing is
  // checkpointed and `plan` (from the cloud) sets how ranks are merged.
  static StatusOr<std::unique_ptr<Coordinator>> CreateEdge(
      const CoordinatorConfig& config, const EdgePlan& plan);
  ~Coordinator();

  // ---- handlers (thread-safe) -------------------------------------------
  StatusOr<Registration> Register(const WorkerProfile& profile);
  // NotFound for an unknown session (the worker should re-register).
  StatusOr<int64_t> Heartbeat(const std::string& session_id);
  // Long poll: returns as soon as there is a task for this worker, or after
  // `wait` with kWait.
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
  // Takes a decoded update; validates and queues it for the round. A
  // rejection is logged with its reason and counted.
  Status SubmitUpdate(const std::string& session_id, const UpdateHeader& header,
                      TensorMap delta, uint64_t bytes_received);
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

  // ---- the round loop ----------------------------------------------------
  // Runs every remaining round; returns when done (after the shutdown
  // grace) or after Stop(). Not reentrant.
  Status Run();
  // Asks Run() to return soon; safe from a signal-handling thread.
  void Stop();

  // ---- edge mode -----------------------------------------------------------
  // Runs task.edge_rounds rounds with this edge's workers starting from the
  // cloud's adapter; returns the edge's adapter and what went into it.
  StatusOr<EdgeResult> RunEdgeRounds(const TensorMap& cloud_global,
                                     const EdgeTask& task);
  // Ends an edge: its workers get SHUTDOWN for up to shutdown_grace_s.
  void Finish();

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
    int64_t rank = 0;  // assigned LoRA rank (heterogeneous ranks); 0 = r
  };
  // This round's DP parameters (see dp.h). REQUIRES: mu_ to change.
  struct RoundDp {
    bool enabled = false;
    double clip_norm = 0;         // C
    double z_update = 0;          // noise multiplier of the update
    double sum_stddev = 0;        // total noise on the sum of clipped updates
    double count_stddev = 0;      // total noise on the unclipped count
    double edge_share = 0;        // what each selected edge adds (placement
    double edge_count_share = 0;  // edges); the cloud adds the rest
  };
  struct Pending {
    std::string worker_id;
    UpdateHeader header;
    TensorMap delta;
    bool edge = false;
    uint64_t num_samples_profile = 0;
    // Secure aggregation: the unmasked mean of header.workers users'
    // updates, whose own headers are `members` (their deltas never seen).
    bool summed = false;
    std::vector<std::pair<std::string, UpdateHeader>> members;
  };
  // The secure aggregation of the current round (security/secagg.h).
  struct SecAggRound {
    enum class Stage { kAdvertise, kShareKeys, kMaskedInput, kUnmask, kDone };
    Stage stage = Stage::kAdvertise;
    bool failed = false;  // a step missed its threshold: no sum this round
    std::unique_ptr<secagg::Server> server;
    secagg::Params params;
    double scale = 0;
    std::vector<std::string> names;          // masked tensors
    std::map<std::string, uint32_t> index;   // worker -> client id
    std::string broadcast;                   // round 0's result
    std::map<uint32_t, std::string> routed;  // round 1's, per client of U2
    std::string unmask_request;              // round 3's request
    std::set<uint32_t> advertised, shared, survivors, unmasked;
    // Each of rounds 0 and 1 may take setup_time from its start.
    std::chrono::steady_clock::duration setup_time{};
    std::chrono::steady_clock::time_point setup_deadline;
  };
  enum class Phase { kWaitWorkers, kCollect, kAggregate, kDone };

  explicit Coordinator(const CoordinatorConfig& config);
  Status Init();
  // The rank worker `w` trains; 0 = the global's shapes. REQUIRES: mu_.
  int64_t RankOf(const WorkerEntry& w) const;
  peft::AdapterCost CostFor(const WorkerProfile& p) const;
  // Re-assigns the ranks of this round's workers from what happened.
  // REQUIRES: mu_ held.
  void UpdateRanks(const std::vector<Pending>& answered);
  // Shares of the frozen tensors, and ranks of the selected, into `m`.
  void FillRoundShape(RoundMetrics* m);
  // Answers SHUTDOWN until every live worker heard it or the grace ends.
  void ShutdownGrace();

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
  // Secure aggregation. REQUIRES: mu_ held. StartSecAgg sets up the round's
  // session over the selected workers that are not edges (none with fewer
  // than 2); AdvanceSecAgg closes key agreement steps when everyone is in
  // or the setup time is up; FinishSecAgg (after collect) unmasks and puts
  // one summed update in place of the masked ones (none on failure).
  void StartSecAgg(int64_t round, double deadline_s);
  // SubmitUpdate for a masked upload (not under mu_).
  Status SubmitMasked(const std::string& session_id,
                      const std::string& worker_id, const UpdateHeader& header,
                      const TensorMap& words,
                      const std::vector<std::string>& names,
                      uint64_t bytes_received);
  void AdvanceSecAgg(std::chrono::steady_clock::time_point now);
  void FinishSecAgg(std::unique_lock<std::mutex>& lock, int64_t round,
                    std::vector<Pending>* updates);
  // DP-FedAvg: the noised mean of the clipped updates, as one update.
  StatusOr<TensorMap> DpMean(const TensorMap& current,
                             const std::set<std::string>& frozen,
                             const std::vector<Pending>& updates,
                             RoundMetrics* m);
  // The cloud's DP set-up before round 1 (delta, calibration); and before
  // each round (clip norm and noise from the budget). REQUIRES: mu_ held
  // for PlanRoundDp.
  Status InitDp();
  Status PlanRoundDp(int edges_selected);
  // After a round: the accountant, adaptive clipping, the metrics.
  void FinishRoundDp(const std::vector<Pending>& updates, int64_t round,
                     int users_selected, int users_alive, int edges_selected,
                     int edges_alive, RoundMetrics* m);
  // The sampling rate expected for a round before it runs.
  double ExpectedSamplingRate();
  // The noised count of unclipped updates among `updates` (the edges'
  // noise shares plus what this level adds) and the users behind them.
  double NoisedUnclippedCount(const std::vector<Pending>& updates,
                              double* users);
  double ServerEval();
  // The PEFT options that describe `adapter` (per-module ranks and alphas
  // when a heterogeneous merge left them different from peft.lora.r).
  peft::PeftOptions OptionsFor(const TensorMap& adapter) const;
  Status WriteCheckpoint(int64_t round);
  void LogRound(const RoundMetrics& m);
  bool WaitForWorkers();

  CoordinatorConfig config_;
  bool edge_mode_ = false;
  std::optional<aggregation::HeteroOptions> hetero_;  // heterogeneous ranks
  std::unique_ptr<peft::ApfController> apf_;
  // DP: the accountant (cloud), the noise, the clip norm (adaptive), the
  // total noise multiplier z (calibrated) and delta.
  std::unique_ptr<privacy::RdpAccountant> accountant_;
  std::unique_ptr<privacy::GaussianNoise> noise_;
  double clip_norm_ = 0;
  double dp_z_ = 0;
  double dp_delta_ = 0;
  double dp_count_stddev_ = 0;  // adaptive clipping: noise on the count
  int64_t dp_population_ = 0;
  bool dp_ready_ = false;
  RoundDp round_dp_;                     // GUARDED_BY(mu_)
  std::unique_ptr<SecAggRound> secagg_;  // GUARDED_BY(mu_)
  std::mt19937_64 codec_rng_;            // GUARDED_BY(codec_mu_)
  std::mutex codec_mu_;
  std::shared_ptr<const TensorMap> init_;  // the initial global adapter
  int64_t edge_round_ = 0;                 // edge mode: rounds run so far
  double round_deadline_s_ = 0;            // edge mode: this round's limit
  std::map<std::string, UpdateHeader> last_round_headers_;  // round loop
  std::shared_ptr<const model::LlamaWeights> base_;
  std::unique_ptr<aggregation::Strategy> strategy_;
  std::shared_ptr<const TensorMap> template_;  // zeros: names and shapes
  transport::Schema schema_;                   // template_'s names
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
  std::map<std::string, uint64_t> round_worker_bytes_;  // GUARDED_BY(mu_)
  uint64_t total_bytes_up_ = 0, total_bytes_down_ = 0;  // GUARDED_BY(mu_)
  std::vector<RoundMetrics> history_;                   // GUARDED_BY(mu_)
  std::set<std::string> told_shutdown_;                 // GUARDED_BY(mu_)
  std::set<std::string> frozen_;  // this round's  GUARDED_BY(mu_)
  std::map<std::string, int64_t> last_changed_;  // key -> round GUARDED_BY
  LocalTrainSpec train_;  // edge: the cloud's GUARDED_BY(mu_)
  EdgeTask edge_task_;    // edge: current   GUARDED_BY(mu_)
  std::map<std::string, int64_t> round_ranks_;  // selected -> rank this round
  std::mt19937_64 rng_;                         // round loop only
  int64_t completed_rounds_ = 0;                // round loop only
  bool started_ = false;  // min_available was met  // GUARDED_BY(mu_)
  std::atomic<bool> stop_{false};
  uint64_t next_session_ = 1;  // GUARDED_BY(mu_)
};

// Milliseconds since the Unix epoch.
uint64_t UnixMillis();

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_COORDINATOR_H_
