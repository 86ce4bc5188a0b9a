// An adapter update as the vector of 32-bit words secure aggregation sums
// (security/secagg.h), shared by the worker that masks it and the server
// that decodes the sum.
//
// Layout: the tensors named in `names` (sorted), each row-major, every
// element a fixed-point word at `scale` (security/secagg_fixed_point.h);
// then one plain integer word, the unclipped bit (adaptive clipping counts
// the unclipped updates, and the count is summed under the masks too).
// A tensor the update left out (not trained this round) counts as zeros,
// so every worker's vector has the same length.
//
// Thread-safety: reentrant; the caller owns the generator.
#ifndef FEDPEFT_SECURITY_SECAGG_UPDATE_H_
#define FEDPEFT_SECURITY_SECAGG_UPDATE_H_

#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/llama.h"  // TensorMap

namespace fedpeft {
namespace secagg {

// The tensors a masked update covers: every tensor of `adapter` except the
// frozen ones and, with FFA-LoRA, the fixed lora_A. Sorted.
std::vector<std::string> MaskedTensorNames(const TensorMap& adapter,
                                           const std::set<std::string>& frozen,
                                           bool ffa);

// Words of the vector: the elements of `names` in `shapes`, plus 1.
// InvalidArgument for a name `shapes` lacks or a vector longer than
// kMaxVectorLength.
StatusOr<uint64_t> MaskedVectorLength(const TensorMap& shapes,
                                      const std::vector<std::string>& names);

// Encodes `update` (F32 CPU tensors, a subset of `names`, each of its shape
// in `shapes`) and the unclipped bit. Fails (InvalidArgument) on a tensor
// not in `names`, of another shape, or a value the scale cannot hold.
StatusOr<std::vector<uint32_t>> EncodeUpdateWords(
    const TensorMap& update, const TensorMap& shapes,
    const std::vector<std::string>& names, double scale, bool unclipped,
    std::mt19937_64& rng);

// Decodes a sum of such vectors: the summed tensors (F32, one per name)
// and, in *unclipped, how many of the updates were not clipped.
StatusOr<TensorMap> DecodeSumWords(const std::vector<uint32_t>& words,
                                   const TensorMap& shapes,
                                   const std::vector<std::string>& names,
                                   double scale, uint32_t* unclipped);

}  // namespace secagg
}  // namespace fedpeft

#endif  // FEDPEFT_SECURITY_SECAGG_UPDATE_H_
