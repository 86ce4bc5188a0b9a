// The federated worker: registers with a coordinator (or edge), then loops
// fetch task -> download global adapter -> train locally -> upload the delta,
// until the server says SHUTDOWN.
//
// Resilience: every call has a deadline; UNAVAILABLE is retried with capped
// exponential backoff and jitter (the coordinator may be restarting); an
// unknown-session answer (NOT_FOUND) makes the worker register again, so it
// rejoins a restarted coordinator on its own. A heartbeat thread keeps the
// worker marked alive while it trains.
//
// Ownership: the client shares the frozen base weights and the tokenizer
// (many in-process clients may share one base in simulations) and owns its
// adapter, data and optimizer.
// Thread-safety: Run() on one thread; Stop() from any thread.
#ifndef FEDPEFT_WORKER_WORKER_CLIENT_H_
#define FEDPEFT_WORKER_WORKER_CLIENT_H_

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "data/dataset.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "peft/peft_model.h"
#include "worker/compute_slots.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace proto {
class Task;
}  // namespace proto

namespace worker {

struct WorkerStats {
  int64_t rounds_trained = 0;   // uploads accepted by the server
  int64_t rounds_rejected = 0;  // uploads the server refused
  int64_t rounds_dropped = 0;   // simulated dropouts
  uint64_t bytes_up = 0;        // serialized bytes sent in uploads
  uint64_t bytes_down = 0;      // serialized bytes received in downloads
  int64_t registrations = 0;
  int64_t tensors_uploaded = 0;  // adapter tensors sent, over all rounds
};

class WorkerClient {
 public:
  // Loads (and, with config.shard, partitions) the local data.
  // `base` and `tokenizer` are shared, never modified. Workers that share a
  // process may share `slots`: each holds one while it trains, evaluates or
  // encodes its update (see compute_slots.h); null = no bound.
  static StatusOr<std::unique_ptr<WorkerClient>> Create(
      const WorkerConfig& config,
      std::shared_ptr<const model::LlamaWeights> base,
      std::shared_ptr<const model::Tokenizer> tokenizer,
      std::shared_ptr<ComputeSlots> slots = nullptr);
  ~WorkerClient();

  // Runs until SHUTDOWN (OK), Stop() (OK), or the server stays unreachable
  // for server.give_up_after_s (Unavailable).
  Status Run();
  void Stop();

  WorkerStats stats() const;
  const std::string& id() const { return config_.worker.id; }

 private:
  class Impl;
  WorkerClient(const WorkerConfig& config,
               std::shared_ptr<const model::LlamaWeights> base,
               std::shared_ptr<const model::Tokenizer> tokenizer,
               std::shared_ptr<ComputeSlots> slots);

  const WorkerConfig config_;
  std::unique_ptr<Impl> impl_;
};

// A worker's local data: `data` (or its data.shard), split into training
// and held-out examples. Every rank of a distributed worker loads the same.
struct WorkerData {
  std::vector<data::Example> train;
  std::vector<data::Example> eval;
  size_t num_records = 0;  // records of this worker (shard) before the split
};
StatusOr<WorkerData> LoadWorkerData(const WorkerConfig& config,
                                    const model::Tokenizer& tokenizer);

// Loads the base model and tokenizer a worker config names.
struct WorkerBase {
  std::shared_ptr<const model::LlamaWeights> weights;
  std::shared_ptr<const model::Tokenizer> tokenizer;
};
StatusOr<WorkerBase> LoadWorkerBase(const ModelOptions& options);

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_WORKER_CLIENT_H_
