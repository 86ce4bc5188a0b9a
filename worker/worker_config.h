// Configuration of a federated worker (`fedpeft worker --config FILE`).
//
//   worker:     id, threads, ram_mb, uplink_mbps, distributed: {world_size,
//               rank, master_address, timeout_s, port_file} (one worker over
//               several processes or machines, worker/distributed.h)
//   server:     address, max_message_mb, rpc_timeout_s, task_wait_ms,
//               backoff_initial_ms, backoff_max_ms, give_up_after_s
//   tls:        enabled | insecure (one is required), ca, cert, key,
//               server_name (security/tls.h); with TLS, worker.id must be
//               the certificate's common name
//   model:      the base model (must be the coordinator's); source:
//               upstream fetches it from the server into cache_dir
//               (worker/model_download.h)
//   data:       local data (data/dataset.h) plus `shard: i/n` to take one
//               partition of a shared file (data.partition picks how)
//   train:      local optimizer settings (steps, batch and lr come with
//               each task)
//   simulation: slowdown, dropout_prob, emulate_uplink (heterogeneity in
//               simulations)
//   executor:   users, first_user, population, threads, state_dir: host
//               virtual users (`fedpeft executor`, worker/executor.h)
//   logging:    level, file
//
// Thread-safety: plain values.
#ifndef FEDPEFT_WORKER_WORKER_CONFIG_H_
#define FEDPEFT_WORKER_WORKER_CONFIG_H_

#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"
#include "data/dataset.h"
#include "security/tls_options.h"
#include "worker/distributed.h"
#include "worker/local_trainer.h"
#include "worker/train_config.h"

namespace fedpeft {
namespace worker {

struct WorkerIdentity {
  std::string id = "worker-0";  // stable name; the coordinator keys on it
  int threads = 1;              // intra-op threads for local training
  int64_t ram_mb = 0;           // memory it offers (0 = measure)
  double uplink_mbps = 0;       // uplink bandwidth (0 = unknown)
  // Data-parallel training over several processes; rank 0 alone talks to
  // the server (world_size 1, the default: this process is the worker).
  DistributedOptions distributed;

  void Read(ConfigReader& in);
};

struct ConnectionOptions {
  std::string address = "127.0.0.1:50051";  // coordinator or edge
  int max_message_mb = 16;
  double rpc_timeout_s = 60;     // deadline of every unary call and stream
  int task_wait_ms = 5000;       // long-poll budget per GetTask
  int backoff_initial_ms = 200;  // retry backoff on UNAVAILABLE
  int backoff_max_ms = 5000;
  double give_up_after_s = 0;  // stop after this long unreachable (0 = never)
  // The top-level `tls` section: how the server is verified and which
  // certificate this client presents. Read by the owning config.
  security::TlsOptions tls;

  void Read(ConfigReader& in);
};

struct SimulationProfile {
  double slowdown = 1.0;      // >1: sleep (slowdown-1) x compute time
  double dropout_prob = 0.0;  // chance to drop out of a round (no upload)
  uint64_t seed = 7;
  // Sleep as long as worker.uplink_mbps would take to move the round's
  // download and upload, so a slow link costs round time as it would.
  bool emulate_uplink = false;

  void Read(ConfigReader& in);
};

// `fedpeft executor`: this process hosts virtual users first_user ..
// first_user + users - 1 of a population of `population` users, whose data
// are the partitions of `data` (data.partition) into that many parts.
struct ExecutorOptions {
  int users = 0;       // hosted here; 0 = not an executor
  int first_user = 0;  // index of the first
  int population = 0;  // users the data is split among; 0 = first + users
  int threads = 0;     // users trained at once; 0 = one per core
  // Where each user's error-feedback residual waits between its rounds
  // (one small file per user); empty = in memory.
  std::string state_dir;

  void Read(ConfigReader& in);
};

struct WorkerConfig {
  WorkerIdentity worker;
  ConnectionOptions server;
  ModelOptions model;
  data::DataOptions data;
  std::string shard;  // data.shard "i/n"; empty = the whole file
  TrainOptions train;
  SimulationProfile simulation;
  ExecutorOptions executor;
  LoggingOptions logging;

  void Read(ConfigReader& in);
};

StatusOr<WorkerConfig> LoadWorkerConfig(
    const std::string& path, const std::vector<std::string>& overrides);

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_WORKER_CONFIG_H_
