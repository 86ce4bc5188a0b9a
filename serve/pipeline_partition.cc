#include "serve/pipeline_partition.h"

#include <algorithm>
#include <limits>

namespace fedpeft {
namespace serve {

StatusOr<std::vector<int64_t>> PartitionLayers(
    const std::vector<uint64_t>& layer_bytes, uint64_t io_bytes,
    const std::vector<StageCapacity>& stages) {
  const int64_t L = static_cast<int64_t>(layer_bytes.size());
  const int64_t K = static_cast<int64_t>(stages.size());
  if (K < 1) return Status::InvalidArgument("a pipeline needs >= 1 stage");
  if (K - 1 > L) {
    return Status::InvalidArgument(
        "pipeline.stages: " + std::to_string(K) + " stages for a model of " +
        std::to_string(L) + " layers; every stage after the head needs one");
  }
  for (int64_t i = 0; i < K; ++i) {
    if (!(stages[i].bandwidth > 0)) {
      return Status::InvalidArgument("stage " + std::to_string(i) +
                                     ": bandwidth must be > 0");
    }
  }
  std::vector<uint64_t> prefix(L + 1, 0);
  for (int64_t l = 0; l < L; ++l) prefix[l + 1] = prefix[l] + layer_bytes[l];
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // cost[i][j]: the least slowest-stage time for stages 0..i-1 holding
  // layers [0, j); from[i][j]: where stage i-1's span begins then.
  std::vector<std::vector<double>> cost(K + 1,
                                        std::vector<double>(L + 1, kInf));
  std::vector<std::vector<int64_t>> from(K + 1,
                                         std::vector<int64_t>(L + 1, -1));
  cost[0][0] = 0;
  for (int64_t i = 0; i < K; ++i) {
    const StageCapacity& s = stages[i];
    for (int64_t a = 0; a <= L; ++a) {
      if (cost[i][a] == kInf) continue;
      for (int64_t b = a + (i == 0 ? 0 : 1); b <= L; ++b) {
        const uint64_t bytes = prefix[b] - prefix[a] + (i == 0 ? io_bytes : 0);
        if (s.memory_bytes != 0 && bytes > s.memory_bytes) break;
        const double t = std::max(cost[i][a], bytes / s.bandwidth);
        if (t < cost[i + 1][b]) {
          cost[i + 1][b] = t;
          from[i + 1][b] = a;
        }
      }
    }
  }
  if (cost[K][L] == kInf) {
    std::string budgets;
    for (int64_t i = 0; i < K; ++i) {
      budgets += (i ? ", " : "") + std::string("stage ") + std::to_string(i) +
                 " " +
                 (stages[i].memory_bytes == 0
                      ? std::string("unlimited")
                      : std::to_string(stages[i].memory_bytes >> 20) + " MiB");
    }
    return Status::InvalidArgument(
        "the model's " + std::to_string((prefix[L] + io_bytes) >> 20) +
        " MiB of weights do not fit the stages' memory (" + budgets +
        "; pipeline.memory_mb)");
  }
  std::vector<int64_t> b(K + 1, L);
  for (int64_t i = K; i > 0; --i) b[i - 1] = from[i][b[i]];
  return b;
}

StatusOr<std::vector<int64_t>> SplitByHand(const std::vector<int>& per_stage,
                                           int64_t layers) {
  std::vector<int64_t> b{0};
  for (size_t i = 0; i < per_stage.size(); ++i) {
    if (per_stage[i] < (i == 0 ? 0 : 1)) {
      return Status::InvalidArgument(
          "pipeline.layers: stage " + std::to_string(i) + " is given " +
          std::to_string(per_stage[i]) +
          " layers; expected >= " + (i == 0 ? "0" : "1"));
    }
    b.push_back(b.back() + per_stage[i]);
  }
  if (b.back() != layers) {
    return Status::InvalidArgument(
        "pipeline.layers: the stages' layers add up to " +
        std::to_string(b.back()) + ", the model has " + std::to_string(layers));
  }
  return b;
}

std::string DescribeSplit(const std::vector<int64_t>& boundaries) {
  std::string s;
  for (size_t i = 0; i + 1 < boundaries.size(); ++i) {
    s += (i ? " " : "") + std::string("[") + std::to_string(boundaries[i]) +
         ", " + std::to_string(boundaries[i + 1]) + ")";
  }
  return s;
}

}  // namespace serve
}  // namespace fedpeft
