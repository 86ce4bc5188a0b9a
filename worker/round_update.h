// What a participant uploads for a round, built from what it trained:
// the delta against the global adapter (only the tensors trained), self-
// pruned and truncated to the rank it may send, with the error of its
// last quantized upload added back (error feedback), clipped (DP) and
// encoded. Shared by the worker (worker_client.h) and the executor of
// virtual users (executor.h), so a user's update is a worker's.
//
// Thread-safety: a function of its arguments; `memory` and `rng` belong to
// one participant and must not be shared by concurrent calls.
#ifndef FEDPEFT_WORKER_ROUND_UPDATE_H_
#define FEDPEFT_WORKER_ROUND_UPDATE_H_

#include <random>
#include <set>
#include <string>

#include "common/status.h"
#include "model/llama.h"
#include "peft/peft_model.h"
#include "proto/fedpeft.pb.h"
#include "worker/federation_client.h"
#include "worker/local_trainer.h"

namespace fedpeft {
namespace worker {

// The adapter options a task's `rank` asks for (0: the registered rank),
// and that rank in *rank. InvalidArgument for a rank on a non-LoRA adapter.
StatusOr<peft::PeftOptions> OptionsAtRank(const peft::PeftOptions& registered,
                                          int64_t task_rank, int64_t* rank);

// The local training of a task: `local` (the participant's own optimizer
// settings) with the task's steps, batch, lr, FedProx weight and seed, and
// its frozen tensors (every lora_A too under FFA-LoRA).
TrainOptions TaskTrainOptions(const TrainOptions& local,
                              const proto::Task& task, const TensorMap& global);

// A participant's error feedback across rounds: the quantization error of
// its last upload, at rank `rank` (-1: none).
struct UpdateMemory {
  TensorMap residual;
  int64_t rank = -1;
};

// Whether the task's uploads carry error feedback (quantized, with
// compression.error_feedback): only then does UpdateMemory matter.
bool UsesErrorFeedback(const proto::Task& task);

struct RoundUpdate {
  EncodedUpdate encoded;
  size_t tensors_trained = 0;  // in the delta
  int64_t upload_rank = 0;     // 0: the global adapter's shapes
  int bits = 32;               // of the encoding
  double clip = 0;             // the task's clip norm (0 = none)
  double norm = 0;             // the update's L2 norm before clipping
  bool unclipped = true;
};

// `local`: the adapter after training (F32, CPU), at `rank` (the task's
// rank, or the registered one when the task names none); `global`: what it
// trained from; `trained`: the tensors that changed. `who` names the
// participant in logs.
StatusOr<RoundUpdate> BuildRoundUpdate(
    const TensorMap& local, const TensorMap& global,
    const std::set<std::string>& trained, int64_t rank, const proto::Task& task,
    const std::string& who, UpdateMemory* memory, std::mt19937_64* rng);

// The header of the upload: the round, and what the task lets it say of
// the local data (under DP's withhold_metrics, nothing: one sample, no
// losses or timings). `masked`: secure aggregation fills rank and the
// unclipped bit itself.
proto::UpdateHeader RoundUpdateHeader(const proto::Task& task,
                                      const RoundUpdate& update,
                                      const TrainResult& trained,
                                      const EvalResult& evaluated,
                                      uint64_t num_samples, double seconds,
                                      bool masked);

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_ROUND_UPDATE_H_
