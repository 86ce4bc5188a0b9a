// Configuration of the coordinator (`fedpeft coordinator --config FILE`).
//
//   server:     address, port_file, max_message_mb, chunk_kb
//   tls:        enabled | insecure (one is required), ca, cert, key,
//               allowed_names | allowlist_file (security/tls.h)
//   federation: id, rounds, min_available, fraction, min_workers,
//               max_workers, quorum, round_deadline_s, on_quorum_miss,
//               max_retries, heartbeat_interval_ms, worker_timeout_s,
//               task_wait_ms, shutdown_grace_s, seed, sampling (fixed |
//               poisson)
//   model:      the base model (adapter shapes, export, server-side eval),
//               delivered in blocks of block_size to edges and workers
//               whose model.source is upstream
//   peft:       the global adapter (sent to workers at registration)
//   strategy:   aggregation (aggregation/strategy.h)
//   train:      the local training spec sent with every task
//   heterogeneity: per-worker LoRA ranks (enabled, method, r_min, safety,
//               grow_below, prune_threshold, stack_max_rank); r_max is
//               peft.lora.r
//   freezing:   apf (adaptive parameter freezing), ffa (FFA-LoRA)
//   hierarchy:  edge_rounds (κ: edge rounds per cloud round)
//   dp:         user-level differential privacy (DP-FedAvg): enabled,
//               clip_norm, noise_multiplier, placement, adaptive_clipping,
//               target_quantile, clip_learning_rate, count_stddev,
//               target_epsilon, budget, delta, population, noise_seed
//   compression: bits, block_size, error_feedback (uploads), download_bits
//   eval:       optional server-side eval on held-out data: data,
//               batch_size, every (rounds between evaluations)
//   checkpoint: dir, keep
//   logging:    level, file, metrics_file
//   limits:     max_update_mb
//
// Thread-safety: plain values.
#ifndef FEDPEFT_COORDINATOR_COORDINATOR_CONFIG_H_
#define FEDPEFT_COORDINATOR_COORDINATOR_CONFIG_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "aggregation/strategy.h"
#include "common/config.h"
#include "common/status.h"
#include "data/dataset.h"
#include "peft/freezing.h"
#include "peft/peft_model.h"
#include "peft/rank_assignment.h"
#include "security/tls_options.h"
#include "worker/train_config.h"

namespace fedpeft {
namespace coordinator {

struct ServerOptions {
  std::string address = "127.0.0.1:50051";  // listen address; port 0 picks
  std::string port_file;    // when set, the bound port is written here
  int max_message_mb = 16;  // gRPC receive/send limit per message
  int chunk_kb = 1024;      // tensor chunk size in streams (< max message)
  // The top-level `tls` section (not under `server`): mutual TLS or the
  // explicit tls.insecure. Read by the owning config.
  security::TlsOptions tls;

  void Read(ConfigReader& in);
};

struct FederationOptions {
  std::string id;         // names the run; default "fedpeft-<seed>"
  int rounds = 5;         // cloud rounds to run
  int min_available = 2;  // alive workers needed before round 1
  double fraction = 1.0;  // share of alive workers selected per round
  // fixed: ceil(fraction * alive) chosen at random (within min/max_workers);
  // poisson: each alive participant independently with probability
  // `fraction` (the sampling the DP accountant assumes; the number varies,
  // min/max_workers do not apply, and a round may select nobody).
  std::string sampling = "fixed";
  int min_workers = 1;            // select at least this many
  int max_workers = 0;            // and at most this many (0 = no cap)
  double quorum = 0.5;            // share of the selected whose answers close a
                                  // round at its deadline (at least one)
  double round_deadline_s = 300;  // collect phase limit
  std::string on_quorum_miss = "retry";  // retry | skip
  int max_retries = 2;  // retries of a round that missed its quorum
  int heartbeat_interval_ms = 2000;
  double worker_timeout_s = 20;  // alive = heard from within this
  int task_wait_ms = 5000;       // GetTask long-poll cap
  double shutdown_grace_s = 5;   // keep answering SHUTDOWN after the end
  uint64_t seed = 1;             // selection and per-round task seeds

  void Read(ConfigReader& in);
};

struct LocalTrainSpec {
  int local_epochs = 1;
  int64_t local_steps = 20;  // 0 = run local_epochs
  int batch_size = 8;
  double lr = 3e-3;
  double fedprox_mu = 0.0;

  void Read(ConfigReader& in);
};

// Heterogeneous LoRA ranks: each worker trains its own rank in
// [r_min, peft.lora.r], assigned from its profile and re-assigned every round
// from what was measured (peft/rank_assignment.h); the server merges the
// ranks with `method` (aggregation/hetero_rank.h).
struct HeterogeneityOptions {
  bool enabled = false;
  std::string method = "zero_pad";  // zero_pad | svd | stack
  peft::RankPolicy policy;          // r_min, safety, grow_below (r_max set
                                    // from peft.lora.r)
  double prune_threshold = 0;       // worker self-pruning; 0 = off
  int64_t stack_max_rank = 0;       // stack: cap per module (0 = lossless)

  void Read(ConfigReader& in);
  nlohmann::json ToJson() const;
  static StatusOr<HeterogeneityOptions> FromJson(const nlohmann::json& j);
};

struct FreezingOptions {
  peft::ApfOptions apf;  // adaptive parameter freezing (server side)
  bool ffa = false;      // FFA-LoRA: only lora_B is trained and sent

  void Read(ConfigReader& in);
};

struct HierarchyOptions {
  int edge_rounds = 1;  // κ: an edge aggregates every round, the cloud
                        // every κ edge rounds (HierFAVG)

  void Read(ConfigReader& in);
};

// User-level differential privacy, DP-FedAvg (McMahan et al. 2018): every
// update is clipped to clip_norm (L2 over the whole update) on its worker;
// the sum of a round's clipped updates gets Gaussian noise of standard
// deviation noise_multiplier * clip_norm, once per cloud round, at the cloud
// (placement central) or in equal shares at the edges (placement edges);
// the mean over the participants is what the strategy applies. An RDP
// accountant (security/rdp_accountant.h) tracks epsilon at `delta`.
struct DpOptions {
  bool enabled = false;
  double clip_norm = 0.1;         // C (the initial C with adaptive clipping)
  double noise_multiplier = 1.0;  // z: noise stddev / C on the sum
  std::string placement = "central";  // central | edges
  // Adaptive clipping (Andrew et al. 2021): C moves geometrically toward
  // the target_quantile of the update norms; the noise on the count of
  // unclipped updates is count_stddev (0 = expected participants / 20, the
  // paper's choice), paid for out of noise_multiplier.
  bool adaptive_clipping = false;
  double target_quantile = 0.5;
  double clip_learning_rate = 0.2;
  double count_stddev = 0;
  // A privacy budget (0 = none): `calibrate` sets noise_multiplier before
  // round 1 so that federation.rounds rounds spend exactly target_epsilon;
  // `stop` keeps noise_multiplier and ends training before a round would
  // overspend.
  double target_epsilon = 0;
  std::string budget = "calibrate";  // calibrate | stop
  double delta = 0;                  // 0 = 1 / population^1.1
  int64_t population = 0;            // users who may take part; 0 = the workers
                                     // registered when round 1 starts
  // 0 (the default): noise from OpenSSL's DRBG, unpredictable. Any other
  // value makes the cloud's noise reproducible for experiments only (a
  // warning at start): it is derived per round and attempt, never repeats
  // across a resume, and is never sent to edges, which always draw theirs
  // from the DRBG.
  uint64_t noise_seed = 0;
  // What a worker reports besides its update under DP. false (default):
  // nothing about its data (no losses, sample counts or timings: the server
  // logs "withheld"); true: they travel and are logged in the clear, which
  // leaks information about each user's data to the server and its logs.
  bool report_worker_metrics = false;
  // Edges: the largest user count an edge may declare for its update (its
  // weight in the noised sum); 0 = dp.population. An edge's own sampling
  // rate cannot be checked by the cloud, so the accountant counts every
  // user behind a selected edge as selected unless trust_edge_sampling.
  int64_t max_users_per_edge = 0;
  bool trust_edge_sampling = false;

  void Read(ConfigReader& in);
};

// How updates and the global adapter travel (proto/tensor_codec.h).
struct CompressionOptions {
  int bits = 32;  // uploads (workers and edges): 32 | 16 | 8 | 4 | 2
  int64_t block_size = 256;
  bool error_feedback = false;  // workers carry the quantization error over
  int download_bits = 32;       // the global adapter sent to workers

  void Read(ConfigReader& in);
};

// Secure aggregation (security/secagg.h, Bonawitz et al. 2017): the server
// that collects a round's worker uploads (an edge, or the coordinator for
// its direct workers) learns only their sum. Workers agree on keys before
// training (within setup_timeout_s); after the uploads the server asks the
// survivors to unmask (within unmask_timeout_s). Up to a third of the
// selected workers may drop out anywhere. Needs dp.enabled: the clip norm
// bounds every coordinate, which sizes the fixed-point encoding.
struct SecAggOptions {
  bool enabled = false;
  double setup_timeout_s = 10;   // each key agreement step (<= round / 4)
  double unmask_timeout_s = 10;  // unmasking, after the round's uploads
  void Read(ConfigReader& in);
  nlohmann::json ToJson() const;
  static StatusOr<SecAggOptions> FromJson(const nlohmann::json& j);
};

struct ServerEvalOptions {
  data::DataOptions data;  // empty data.path = no server-side eval
  int batch_size = 16;
  // Evaluate after every `every`-th round (and the last): a long run of
  // short rounds need not spend most of its time evaluating.
  int every = 1;

  void Read(ConfigReader& in);
};

struct CheckpointOptions {
  std::string dir = "checkpoints";  // one subfolder per round + LATEST
  int keep = 3;                     // round folders kept

  void Read(ConfigReader& in);
};

struct CoordinatorLogging {
  std::string level = "info";
  std::string file;
  std::string metrics_file = "metrics.jsonl";  // empty = none

  void Read(ConfigReader& in);
};

struct CoordinatorConfig {
  ServerOptions server;
  FederationOptions federation;
  worker::ModelOptions model;
  peft::PeftOptions peft;
  aggregation::StrategyOptions strategy;
  LocalTrainSpec train;
  HeterogeneityOptions heterogeneity;
  FreezingOptions freezing;
  HierarchyOptions hierarchy;
  DpOptions dp;
  CompressionOptions compression;
  SecAggOptions secagg;
  ServerEvalOptions eval;
  CheckpointOptions checkpoint;
  CoordinatorLogging logging;
  int max_update_mb = 256;     // limits.max_update_mb: one upload at most
  uint64_t adapter_seed = 42;  // initialisation of the global adapter

  void Read(ConfigReader& in);
};

// Checks that `model`'s delivery blocks (model.block_size) fit in the
// messages of `server` (the block and a little framing); the error goes to
// `model_in` (the `model` section).
void CheckBlockSizeFits(ConfigReader& model_in,
                        const worker::ModelOptions& model,
                        const ServerOptions& server);

StatusOr<CoordinatorConfig> LoadCoordinatorConfig(
    const std::string& path, const std::vector<std::string>& overrides);

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_COORDINATOR_CONFIG_H_
