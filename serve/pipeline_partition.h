// How a pipeline splits a model's layers across its K stages
// (serve/pipeline_head.h): contiguous spans, stage 0 first. Stage 0 (the
// head) also holds the embeddings and the output layer (`io_bytes`).
//
// A token's decode reads every weight once, so a stage's time per token is
// its bytes over its memory bandwidth; PartitionLayers picks the spans that
// minimise the slowest stage's time, as measured (`bandwidth`), within each
// stage's memory. By hand, `pipeline.layers` gives the count per stage.
//
// No LibTorch. Thread-safety: free functions.
#ifndef FEDPEFT_SERVE_PIPELINE_PARTITION_H_
#define FEDPEFT_SERVE_PIPELINE_PARTITION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace serve {

struct StageCapacity {
  double bandwidth = 1.0;     // bytes per second (any unit, the same for all)
  uint64_t memory_bytes = 0;  // weight budget; 0 = unlimited
};

// Boundaries b[0] = 0 <= b[1] <= ... <= b[K] = layers: stage i holds layers
// [b[i], b[i+1]). Every stage but the head holds at least one layer.
// InvalidArgument naming the stage and its budget when no split fits.
StatusOr<std::vector<int64_t>> PartitionLayers(
    const std::vector<uint64_t>& layer_bytes, uint64_t io_bytes,
    const std::vector<StageCapacity>& stages);

// The boundaries of a split by hand (`per_stage[i]` layers to stage i);
// InvalidArgument naming pipeline.layers when they do not add up to
// `layers` or a stage after the head gets none.
StatusOr<std::vector<int64_t>> SplitByHand(const std::vector<int>& per_stage,
                                           int64_t layers);

// "[0, 8) [8, 24)", for logs.
std::string DescribeSplit(const std::vector<int64_t>& boundaries);

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_PIPELINE_PARTITION_H_
