// Data-parallel training of one worker over several processes
// (worker.distributed): the glue between LocalTrainer, which knows nothing
// of processes, and the process group (worker/distributed.h). Every rank
// trains its rows of each micro-batch; after backward the gradients of the
// trained tensors, times the rank's target tokens, are summed over the
// ranks and divided by the total, which is the one-process gradient (the
// loss is a mean over target tokens). Plus the fingerprints the ranks
// compare before they train together.
//
// Thread-safety: free functions; the reducer runs on the trainer's thread.
#ifndef FEDPEFT_WORKER_DATA_PARALLEL_H_
#define FEDPEFT_WORKER_DATA_PARALLEL_H_

#include <cstdint>
#include <vector>

#include "data/dataset.h"
#include "model/llama.h"
#include "worker/distributed.h"
#include "worker/local_trainer.h"

namespace fedpeft {
namespace worker {

// Makes `options` train this rank's share of every micro-batch and reduce
// each step's gradients over `group` (TrainOptions::reduce_step); the
// reducer throws std::runtime_error with group.status()'s message when a
// collective fails. REQUIRES: `group` outlives the trainer.
void MakeDataParallel(DistributedGroup& group, TrainOptions* options);

// Fingerprints of what the ranks must agree on (for ExpectSame): the
// examples' tokens and targets in order; the adapter's names and shapes.
uint64_t ExamplesFingerprint(const std::vector<data::Example>& examples);
uint64_t LayoutFingerprint(const TensorMap& tensors);

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_DATA_PARALLEL_H_
