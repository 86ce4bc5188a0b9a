// A federated worker that spans several processes or machines
// (`worker.distributed`, worker/distributed.h): rank 0 runs the WorkerClient,
// the only process that talks to the federation; ranks > 0 run a
// DistributedFollower, which never dials the server and needs no TLS
// material. Each round:
//
//   rank 0 (WorkerClient)                    rank r > 0 (DistributedFollower)
//   GetTask, DownloadAdapter ◀── server
//   LeadRound: Post(plan) ──── store ──────▶ NextCommand (no deadline)
//                                            builds the adapter the plan names
//     ExpectSame(adapter layout) ◀────────▶ ExpectSame
//     Broadcast(global adapter) ──────────▶ into its adapter
//   Train on share 0 ◀─ all-reduce a step ─▶ Train on share r
//   Evaluate, UploadUpdate ──▶ server
//   LeadShutdown at the end ─── store ────▶ exits (rank 0's status)
//
// The plan carries what the federation decided for the round (steps, batch,
// lr, seed, frozen tensors, FedProx) and rank 0's optimizer settings, so the
// ranks cannot train differently; their data were checked equal when the
// group formed (WorkerClient and DistributedFollower both Join, then
// ExpectSame the examples).
//
// Thread-safety: a DistributedFollower's Run() on one thread; Stop() from
// any thread (it takes effect between rounds).
#ifndef FEDPEFT_WORKER_DISTRIBUTED_WORKER_H_
#define FEDPEFT_WORKER_DISTRIBUTED_WORKER_H_

#include <atomic>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "common/status.h"
#include "model/llama.h"
#include "model/tokenizer.h"
#include "peft/peft_model.h"
#include "worker/data_parallel.h"
#include "worker/distributed.h"
#include "worker/local_trainer.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace worker {

// Rank 0: hands round `round` to the other ranks: its plan (`options`, the
// round's TrainOptions before MakeDataParallel; `peft`'s adapter config),
// then `peft`'s adapter (the global one, already loaded).
Status LeadRound(DistributedGroup& group, int64_t round,
                 const TrainOptions& options, peft::PeftModel& peft);

// Rank 0, when it stops: tells the other ranks to exit with `why` (OK, or
// the error rank 0 exits with), and waits until they have read it.
Status LeadShutdown(DistributedGroup& group, const Status& why);

class DistributedFollower {
 public:
  // Loads the local data as rank 0 does, joins the group (blocks until
  // every rank has) and checks that every rank has the same data.
  // `base` and `tokenizer` are shared, never modified.
  // REQUIRES: config.worker.distributed.rank > 0.
  static StatusOr<std::unique_ptr<DistributedFollower>> Create(
      const WorkerConfig& config,
      std::shared_ptr<const model::LlamaWeights> base,
      std::shared_ptr<const model::Tokenizer> tokenizer);

  // Trains every round rank 0 hands over. Returns rank 0's status when it
  // says shut down, OK after Stop(), or the error that broke the group.
  Status Run();
  void Stop() { stopped_ = true; }

 private:
  DistributedFollower(const WorkerConfig& config,
                      std::shared_ptr<const model::LlamaWeights> base);
  // One round from rank 0's plan; errors end the follower.
  Status TrainRound(const nlohmann::json& plan);

  const WorkerConfig config_;
  std::shared_ptr<const model::LlamaWeights> base_;
  torch::Device device_{torch::kCPU};
  std::vector<data::Example> train_;
  std::unique_ptr<DistributedGroup> group_;
  std::unique_ptr<peft::PeftModel> peft_;
  std::string adapter_config_;  // the JSON peft_ was built from
  std::atomic<bool> stopped_{false};
};

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_DISTRIBUTED_WORKER_H_
