// What passes between the cloud and an edge besides the protocol's own
// fields: the plan an edge gets at registration (EdgePlan, JSON in
// RegisterReply.plan_json), one cloud task as the edge runs it (EdgeTask),
// and what the edge's rounds produced (EdgeResult).
#ifndef FEDPEFT_COORDINATOR_EDGE_PLAN_H_
#define FEDPEFT_COORDINATOR_EDGE_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/coordinator_config.h"
#include "model/llama.h"

namespace fedpeft {
namespace coordinator {

// What an edge needs to treat its workers as the cloud would: the merge of
// heterogeneous ranks, FFA-LoRA, and the adapter's initialisation seed.
struct EdgePlan {
  HeterogeneityOptions heterogeneity;
  bool ffa = false;
  uint64_t adapter_seed = 42;
  bool dp = false;  // sum clipped updates with equal weights
  bool dp_report_worker_metrics = false;  // else workers withhold them
  // (No noise seed: an edge's noise always comes from the DRBG.)
  CompressionOptions compression;
  SecAggOptions secagg;  // run by the edge with its workers
  std::string ToJson() const;
  static StatusOr<EdgePlan> FromJson(const std::string& text);
};

// One cloud task as an edge runs it (EdgeRounds::Run,
// coordinator/edge_rounds.h).
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

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_EDGE_PLAN_H_
