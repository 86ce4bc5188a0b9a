// The executor of virtual users (`fedpeft executor`): one process that
// hosts many users of a federation, each with its own data partition and
// its own persistent state, and trains the ones a round selects, a few at a
// time. It is how a population of 10^4 users runs on one machine, and how
// it spreads over several: each executor registers with a coordinator (or
// edge) over the normal protocol and mutual TLS, declaring the users it
// hosts, and the server selects, accounts for and merges every user as a
// participant of its own (coordinator/registry.h).
//
//   Register(hosted_users) ─▶ GetTask ─▶ USERS: the tasks of its selected
//   users ─▶ queue ─▶ K threads, each: download (as the user) ─▶ train on
//   the user's records ─▶ BuildRoundUpdate (round_update.h) ─▶ upload (as
//   the user)
//
// Memory grows with K (one adapter and optimizer per thread over one
// shared base) and the users of a round in flight, not with the
// population: a user is its record indices, plus its error-feedback
// residual when uploads are quantized with error feedback (in memory, or
// one file per user in executor.state_dir).
//
// A user's data: `data` without its held-out split (which the server's
// evaluation uses), partitioned by data.partition into
// min(population, records) parts; user u takes part u mod parts (beyond
// the records, users repeat parts: their tasks' seeds still differ).
//
// Not supported for virtual users: secure aggregation (the server refuses
// the registration), local evaluation (the server evaluates), cached
// downloads (every user downloads its round's adapter, as a device would).
//
// Thread-safety: Run() on one thread; Stop() from any thread.
#ifndef FEDPEFT_WORKER_EXECUTOR_H_
#define FEDPEFT_WORKER_EXECUTOR_H_

#include <cstdint>
#include <memory>

#include "common/status.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace worker {

struct ExecutorStats {
  int64_t users_trained = 0;   // uploads the server accepted
  int64_t users_rejected = 0;  // uploads it refused
  int64_t users_failed = 0;    // tasks that failed here (logged)
  int64_t users_expired = 0;   // tasks whose round had closed when reached
  int64_t users_dropped = 0;   // simulated dropouts
  uint64_t bytes_up = 0, bytes_down = 0;
  // Of the users that uploaded: the whole of their rounds here (download
  // to upload reply), and the local training in it.
  double user_seconds = 0, train_seconds = 0;
};

class Executor {
 public:
  // Loads and partitions the data; config.executor.users must be > 0.
  static StatusOr<std::unique_ptr<Executor>> Create(
      const WorkerConfig& config,
      std::shared_ptr<const model::LlamaWeights> base,
      std::shared_ptr<const model::Tokenizer> tokenizer);
  ~Executor();

  // Runs until SHUTDOWN (OK), Stop() (OK), or the server stays unreachable
  // for server.give_up_after_s (Unavailable).
  Status Run();
  void Stop();
  ExecutorStats stats() const;

 private:
  class Impl;
  explicit Executor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_EXECUTOR_H_
