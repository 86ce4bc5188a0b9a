// The plain types the round engine, its stages, the gRPC service and the
// drivers (cloud coordinator, edge) exchange: what a participant says of
// itself, what it is told, what it uploads, and what a round measured.
// No behaviour here; coordinator/service.cc converts them to and from the
// protocol's messages.
#ifndef FEDPEFT_COORDINATOR_ROUND_TYPES_H_
#define FEDPEFT_COORDINATOR_ROUND_TYPES_H_

#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/coordinator_config.h"
#include "model/llama.h"
#include "proto/tensor_codec.h"

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
  // An executor: hosts the virtual users "<worker_id>/u<i>" for i in
  // [first_user, first_user + hosted_users) (proto WorkerProfile).
  uint32_t hosted_users = 0;
  uint32_t first_user = 0;
};

// The id of an executor's virtual user `index`, and the session its calls
// name: "<executor session>#<user id>".
inline std::string HostedUserId(const std::string& executor, uint32_t index) {
  return executor + "/u" + std::to_string(index);
}

struct Registration {
  std::string session_id;
  std::string federation_id;
  int heartbeat_interval_ms = 0;
  std::string adapter_config_json;  // PEFT adapter_config.json text
  std::string base_model;
  std::string plan_json;  // for edges: see EdgePlan
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
  // kUsers: for an executor, the kTrain tasks of its selected users.
  enum class Kind { kWait, kTrain, kShutdown, kUsers };
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
  bool withhold_metrics = false;         // DP: report nothing but the update
  CompressionOptions compression;        // how to upload
  double noise_stddev = 0;               // edges, dp.placement edges: noise on
  double count_noise_stddev = 0;         // their sum and unclipped count
  std::optional<SecAggTaskInfo> secagg;  // the round masks its uploads
  std::string user_id;                   // a virtual user's task
  std::vector<TaskInfo> users;           // kUsers
};

// The steps of the secure-aggregation exchange (proto SecAggRequest).
enum class SecAggStep { kAdvertise, kShareKeys, kUnmask };
struct SecAggResult {
  bool ready = false;   // false: not yet, ask again
  std::string message;  // the step's result (secagg_messages.h bytes)
};

// The most examples one registration or update may claim (2^40, ~1.1e12):
// FedAvg weights and a round's sums stay exact and far from int64's range,
// whatever a participant says.
constexpr uint64_t kMaxNumSamples = uint64_t{1} << 40;

// OK if `num_samples` is in [1, kMaxNumSamples]; else why not, after `from`
// (every update header is checked so, masked or not).
inline Status CheckNumSamples(const std::string& from, uint64_t num_samples) {
  if (num_samples >= 1 && num_samples <= kMaxNumSamples) return Status::Ok();
  return Status::InvalidArgument(from + ": num_samples must be in [1, " +
                                 std::to_string(kMaxNumSamples) + "], got " +
                                 std::to_string(num_samples));
}

struct UpdateHeader {
  int64_t round = 0;
  uint64_t num_samples = 0;  // in [1, kMaxNumSamples]
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
  // DP: no losses, sample count or timings (num_samples 1, the rest 0/NaN).
  bool metrics_withheld = false;
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

// An accepted update of the round in progress, as the stages see it.
struct Update {
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

// The answers an update stands for: a secure sum's members, else 1 (an
// edge's merge is one answer).
inline int AnswersIn(const Update& u) {
  return u.summed ? static_cast<int>(u.members.size()) : 1;
}

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
  // Users eligible at selection: the workers and virtual users alive here,
  // plus the users alive behind each edge whose update was accepted.
  int population = 0;
  // DP (NaN / 0 when off): privacy spent after this round at `delta`, the
  // clip norm and update noise multiplier used, the noised share of
  // updates that were not clipped.
  double epsilon = std::nan("");
  // The same guarantee against the cloud itself: with placement edges it
  // sees each edge's release, noised by that edge's share only; infinite
  // when it sees an update or sum without noise (central placement).
  double epsilon_cloud = std::nan("");
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

// Milliseconds since the Unix epoch.
uint64_t UnixMillis();

// SplitMix64: derives independent seeds from one seed.
inline uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_ROUND_TYPES_H_
