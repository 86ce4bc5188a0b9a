// Building blocks shared by the strategies: the cheap structural checks
// Aggregate repeats before any math, the per-client weights, the weighted
// mean of one key's deltas, and the checks on optimizer state.
//
// Efficiency: the weighted mean keeps one accumulator per key and adds every
// client's delta into it in place (acc += w_k * delta_k), so a round costs one
// streaming read of every update and no per-client temporaries. Keys are
// visited one at a time, so the accumulator (a LoRA factor, ~128 KiB for a
// 7B model at r = 8) stays in cache while the deltas stream past.
//
// Thread-safety: free functions without shared state.
#ifndef FEDPEFT_AGGREGATION_MEAN_H_
#define FEDPEFT_AGGREGATION_MEAN_H_

#include <torch/torch.h>

#include <string>
#include <vector>

#include "aggregation/strategy.h"
#include "common/status.h"
#include "common/text.h"

namespace fedpeft {
namespace aggregation {

// What Aggregate needs to run without throwing or broadcasting silently: at
// least one update, global tensors defined float32, and every update holding
// exactly the global keys with the global shapes and dtype. Does not look at
// values (ValidateUpdate does, once, when the update arrives); this is the
// O(keys) guard for a caller that skipped it. FailedPrecondition otherwise.
Status CheckAggregateInputs(const std::string& strategy,
                            const TensorMap& global,
                            const std::vector<ClientUpdate>& updates);

// Normalised client weights, summing to 1: n_k / Σ n when `weighted`, else
// 1 / N. REQUIRES: CheckAggregateInputs passed and every num_samples > 0.
std::vector<double> ClientWeights(const std::vector<ClientUpdate>& updates,
                                  bool weighted);

// Σ_k weights[k] · updates[k].delta[key] as a fresh float32 tensor (does not
// alias any input). REQUIRES: CheckAggregateInputs passed.
torch::Tensor WeightedMeanDelta(const std::string& key,
                                const std::vector<ClientUpdate>& updates,
                                const std::vector<double>& weights);

// The updates' deltas for `key`, in update order (aliases, no copies).
std::vector<torch::Tensor> DeltasOf(const std::string& key,
                                    const std::vector<ClientUpdate>& updates);

// Deep copy of every tensor (used so State() and LoadState() never alias the
// strategy's live optimizer state).
TensorMap CloneTensorMap(const TensorMap& tensors);

// Checks a checkpointed state map for a strategy whose state is the tensor
// kinds `kinds` (e.g. {"m", "v"}), each keyed "<kind>/<PEFT key>": every key
// has one of the kinds, every kind covers the same PEFT keys with the same
// shapes, float32, finite values. On success fills *by_kind[i] with the
// tensors of kinds[i] keyed by PEFT key (clones). InvalidArgument naming the
// offending key otherwise.
Status SplitState(const std::string& strategy, const TensorMap& state,
                  const std::vector<std::string>& kinds,
                  std::vector<TensorMap>* by_kind);

// Checks that restored optimizer state `state` (PEFT key -> tensor) matches
// the global adapter it is about to be applied to: same keys, same shapes.
// FailedPrecondition naming the key otherwise (a checkpoint of another
// adapter configuration).
Status CheckStateMatchesGlobal(const std::string& strategy,
                               const std::string& kind, const TensorMap& state,
                               const TensorMap& global);

// "Float", "BFloat16", ...; "undefined" for an undefined tensor.
std::string DtypeName(const at::Tensor& t);

}  // namespace aggregation
}  // namespace fedpeft

#endif  // FEDPEFT_AGGREGATION_MEAN_H_
