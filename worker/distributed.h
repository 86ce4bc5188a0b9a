// The process group of a worker that spans several processes or machines
// (`worker.distributed`): data-parallel LoRA training through LibTorch's own
// distributed engine, c10d.
//
// Rendezvous: rank 0 hosts a c10d TCPStore at `master_address`; every rank
// connects to it and the process group connects the ranks pairwise through
// it (Gloo for CPU tensors; NCCL for CUDA tensors where LibTorch has it, see
// ProcessGroupBackend in distributed.cc, the one place the device picks the
// backend). Over the group: AllReduceWeightedMean (a training step's
// gradients, worker/data_parallel.h), Broadcast (the global adapter), and a
// command channel in the store: rank 0 posts small byte strings (a round's
// plan) that the other ranks wait for with no deadline, so an idle worker
// between rounds costs nothing and times nothing out.
//
// Failure: rendezvous and every collective give up after `timeout_s`; a peer
// whose process ends is usually noticed at once (its sockets close). A
// follower waiting for a command fails as soon as rank 0's store goes away.
// Any failed operation breaks the group: the ranks may now disagree, so every
// later call returns that first error (status()); the worker then exits with
// it rather than train out of step.
//
// Ownership: owns the store (and, on rank 0, its server) and the process
// group; non-copyable. Thread-safety: one thread at a time, and every rank
// must issue the same collectives in the same order.
#ifndef FEDPEFT_WORKER_DISTRIBUTED_H_
#define FEDPEFT_WORKER_DISTRIBUTED_H_

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"

namespace fedpeft {
namespace worker {

struct DistributedOptions {
  int world_size = 1;  // processes of this worker; 1 = one process, no group
  int rank = 0;        // this process; rank 0 alone talks to the federation
  // Rank 0's store, HOST:PORT. Every rank names the same address; rank 0
  // listens on PORT (0: any free port, written to `port_file`).
  std::string master_address = "127.0.0.1:29500";
  double timeout_s = 300;  // rendezvous, and each collective
  // Rank 0 writes its store's port and a newline here once it listens (as
  // server.port_file does), for a launcher that started it on port 0.
  std::string port_file;

  // Keys of a "worker.distributed"-like section; errors name the key.
  void Read(ConfigReader& in);
  bool enabled() const { return world_size > 1; }
};

class DistributedGroup {
 public:
  // Joins the group: blocks until all `world_size` ranks have joined, or
  // fails after timeout_s (Unavailable; DeadlineExceeded is not used because
  // a missing rank and a dead one look alike here). `device` is where the
  // tensors passed to collectives live: cpu -> Gloo, cuda -> NCCL when this
  // build has it (Unimplemented otherwise).
  // REQUIRES: options.enabled().
  static StatusOr<std::unique_ptr<DistributedGroup>> Join(
      const DistributedOptions& options, const torch::Device& device);
  ~DistributedGroup();
  DistributedGroup(const DistributedGroup&) = delete;
  DistributedGroup& operator=(const DistributedGroup&) = delete;

  int rank() const { return options_.rank; }
  int world_size() const { return options_.world_size; }
  // The port rank 0's store listens on (the one chosen for port 0).
  int port() const { return port_; }

  // Replaces each of `tensors` by sum_r w_r t_r / sum_r w_r over the ranks,
  // where this rank's `weight` is w_r (e.g. its target tokens, its tensors
  // then being means over them), and returns sum_r w_r. A rank with weight
  // 0 contributes nothing, whatever its tensors hold; when every weight is 0
  // the tensors become zeros. Summed in float64, one message per call (the
  // tensors flattened into one buffer); writes into the tensors' storage.
  // REQUIRES: the same number, shapes and order of tensors on every rank.
  StatusOr<double> AllReduceWeightedMean(std::vector<torch::Tensor>& tensors,
                                         double weight);

  // Sums `values` over the ranks.
  StatusOr<std::vector<int64_t>> AllReduceSum(std::vector<int64_t> values);

  // OK when every rank passes the same `value` (a fingerprint of what must
  // agree: data, adapter layout); else FailedPrecondition naming `what`,
  // on every rank, and the group is broken.
  Status ExpectSame(uint64_t value, const std::string& what);

  // Overwrites `tensors` on every rank with `root`'s, in place, as one
  // message. REQUIRES: one dtype; the same shapes and order on every rank.
  Status Broadcast(std::vector<torch::Tensor>& tensors, int root);

  // Command channel. Rank 0 posts `bytes` as the next command; the previous
  // one is deleted (every rank has taken it by the time a collective after
  // it completed). REQUIRES: rank() == 0.
  Status Post(const std::string& bytes);
  // The next command rank 0 posted, waited for without a deadline: nullopt
  // once `stop` returns true (checked every 50 ms), Unavailable as soon as
  // rank 0's store is gone. REQUIRES: rank() > 0.
  StatusOr<std::optional<std::string>> NextCommand(
      const std::function<bool()>& stop);
  // Waits (at most timeout_s) until every other rank has taken the last
  // command: before rank 0 exits, so its store outlives their last read.
  // REQUIRES: rank() == 0.
  Status WaitCommandTaken();

  // OK, or the first error, after which the group is unusable.
  Status status() const { return broken_; }

 private:
  class Impl;
  DistributedGroup(const DistributedOptions& options, int port,
                   std::unique_ptr<Impl> impl);
  // Runs `op` unless the group is broken; turns its exception into the
  // group's error, naming `what`.
  Status Guard(const std::string& what, const std::function<void()>& op);

  const DistributedOptions options_;
  const int port_;
  std::unique_ptr<Impl> impl_;
  int64_t next_command_ = 0;  // sequence number of the next command
  Status broken_;
};

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_DISTRIBUTED_H_
