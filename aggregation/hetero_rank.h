// Heterogeneous-rank LoRA aggregation: workers train adapters of different
// ranks against one global adapter, and the server folds their deltas back
// into it. Three published methods, chosen by HeteroOptions::method:
//
//   zero_pad  HetLoRA (Cho et al. 2024, "Heterogeneous LoRA for Federated
//             Fine-tuning of On-Device Foundation Models"). A and B are
//             averaged SEPARATELY, each delta zero-padded to the global rank:
//               G_A += Σ_k w_k · ZeroPad(δA_k),  G_B += Σ_k w_k · ZeroPad(δB_k)
//             with w_k ∝ n_k · ‖s·B_k·A_k‖_F (the worker's LOCAL product,
//             truncated global + delta), normalised over the workers that
//             touched the module; if all those norms are 0, w_k ∝ n_k. The
//             global keeps its per-module rank.
//   svd       FlexLoRA (Bai et al. 2024, "Federated Fine-tuning of Large
//             Language Models under Heterogeneous Tasks and Client
//             Resources"). The PRODUCTS are averaged:
//               W = Σ_k w_k · s·B_k·A_k,  w_k ∝ n_k,
//             and the new global is the best rank-r_max approximation of W in
//             balanced form (A = sqrt(S)·Vᵀ, B = U·sqrt(S)/s). Workers' local
//             products replace the global; the global's own tail components
//             beyond a worker's rank are lost for that worker, as in the
//             paper.
//   stack     FLoRA (Wang et al. 2024, "FLoRA: Federated Fine-Tuning Large
//             Language Models with Heterogeneous Low-Rank Adaptations"), made
//             exact for deltas. The new product is the old one plus the
//             weighted mean change of the products:
//               P = s·B_G·A_G + Σ_k w_k · (s·B_k·A_k − s·B_gk·A_gk),  w_k ∝ n_k
//             where B_gk·A_gk is the truncated global worker k started from.
//             The factors are stacked exactly, then compressed losslessly
//             (singular values below rank_tol·σ_max dropped) and capped at
//             stack_max_rank; the global's per-module rank therefore varies
//             between r_max and the cap.
//
// The products s·B·A are compared across ranks: every adapter (global and
// per-worker) uses the same LoRA scaling s whatever its rank (workers adjust
// their alpha), so HeteroOptions::scaling is one number.
//
// Output order (svd, stack): components are sorted by singular value, largest
// first, so TruncateRank(global, r) is the best rank-r start for a worker.
// Components that carry no signal (zero singular value, or missing because the
// product has lower rank than r_max) are "re-seeded": A row i is row i of the
// initial global `init` (PEFT's random A) and B column i is zero, so the
// product is unchanged but the component stays trainable (a zero A row and
// zero B column would have zero gradient for both).
//
// Low-rank math: the dense out×in product is never formed. With the stacked
// factors Bcat (out×R) and Acat (R×in), R = Σ ranks, W = Bcat·Acat =
// Qb·(Rb·Raᵀ)·Qaᵀ from reduced QRs Bcat = Qb·Rb and Acatᵀ = Qa·Ra, so only the
// R×R core is decomposed: O((out + in)·R²) instead of O(out·in·min(out, in)).
// Done in float64; results are float32.
//
// Update convention: as strategy.h, an update is a delta (local adapter after
// training minus the adapter downloaded). A worker with rank r downloaded
// TruncateRank(global, r) and sends deltas at that shape. An update may omit
// keys (frozen tensors, or FFA-LoRA's untrained A): a missing key is a zero
// delta. A module is "touched" by a worker that sent its A or its B; weights
// are renormalised over the workers that touched each module, and modules no
// worker touched keep their global factors unchanged.
//
// Ownership: every function returns fresh tensors (clones); none aliases or
// modifies its inputs.
//
// Thread-safety: free functions without shared state.
#ifndef FEDPEFT_AGGREGATION_HETERO_RANK_H_
#define FEDPEFT_AGGREGATION_HETERO_RANK_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/llama.h"  // TensorMap

namespace fedpeft {
namespace aggregation {

// One LoRA-adapted module: "base_model.model.model.layers.0.self_attn.q_proj"
// with its two keys "<module>.lora_A.weight" and "<module>.lora_B.weight".
struct LoraPair {
  std::string module;
  std::string a_key;
  std::string b_key;
};

// Every LoRA pair in `adapter`, sorted by module. InvalidArgument naming the
// key if a key is neither a lora_A nor a lora_B weight, a pair is incomplete,
// a tensor is not 2-D, or the shapes disagree (A [r, in], B [out, r]).
StatusOr<std::vector<LoraPair>> LoraPairs(const TensorMap& adapter);

// Module -> rank: rows of its A, or columns of its B when the map holds only
// B (a partial update). Keys that are not LoRA weights are ignored.
std::map<std::string, int64_t> ModuleRanks(const TensorMap& adapter);

// The leading `rank` components of every module: A[:rank] and B[:, :rank]
// (contiguous clones). Tensors whose rank is already <= `rank` are cloned
// unchanged, as are keys that are not LoRA weights. Works key by key, so a
// partial map (only A or only B of a module) is truncated too.
// REQUIRES: rank >= 1.
TensorMap TruncateRank(const TensorMap& adapter, int64_t rank);

// Pads A with zero rows and B with zero columns up to `rank` (clones; tensors
// already at rank >= `rank` and non-LoRA keys cloned unchanged). The product
// B·A is unchanged. Key by key, like TruncateRank.
TensorMap ZeroPadRank(const TensorMap& adapter, int64_t rank);

enum class HeteroMethod { kZeroPad, kSvd, kStack };

// "zero_pad" | "svd" | "stack"; InvalidArgument listing the valid names.
StatusOr<HeteroMethod> ParseHeteroMethod(const std::string& name);
const char* HeteroMethodName(HeteroMethod method);

struct HeteroUpdate {
  std::string worker_id;
  // The rank the worker trained and uploaded. Its delta's tensors have the
  // shapes of TruncateRank(global, rank): min(rank, the module's global rank).
  int64_t rank = 0;
  // Delta, keyed by PEFT name: any subset of the global's keys (a missing
  // key is a zero delta). float32.
  TensorMap delta;
  int64_t num_samples = 0;  // weight, > 0
  // stack only: `delta` is instead a whole adapter of any rank per module
  // (an edge's own stacked adapter), started from the full global; it
  // contributes B·A − B_G·A_G. Both factors of every module it touches.
  bool whole_adapter = false;
};

struct HeteroOptions {
  HeteroMethod method = HeteroMethod::kZeroPad;
  // svd: the global's rank (every touched module is returned at r_max).
  // stack: the minimum per-module rank of the global (padded up with
  // re-seeded components). zero_pad: unused (the global keeps its ranks).
  int64_t r_max = 16;
  // s, the LoRA scaling shared by every rank (alpha / r of the global).
  double scaling = 1.0;
  // stack: cap on the global's per-module rank; 0 = min(out, in), i.e. never
  // truncate (lossless). Otherwise must be >= r_max.
  int64_t stack_max_rank = 0;
  // svd, stack: singular values below rank_tol · σ_max count as zero (their
  // components are dropped or re-seeded). In [0, 1).
  double rank_tol = 1e-6;
};

struct HeteroStats {
  // The largest per-module rank of the returned global.
  int64_t max_rank = 0;
  // svd, stack: relative Frobenius norm of the product dropped by truncation,
  // sqrt(Σ_dropped σ²) / sqrt(Σ σ²), the maximum over modules (0 for
  // zero_pad, and for a module whose product is zero).
  double truncated_energy = 0;
};

// The new global adapter after one round of heterogeneous-rank updates, by
// options.method (see the top of this file).
//
// `global` must hold only complete LoRA pairs. `init` is the initial global
// (PEFT init: random A, zero B) with, for svd and stack, every module of
// `global` at rank >= r_max and the same in_features; it re-seeds components
// (zero_pad does not use it and accepts an empty map).
//
// Errors (nothing is computed before all inputs pass):
//   FailedPrecondition  no updates;
//   InvalidArgument     bad options; a malformed global or init; an update
//                       with rank < 1, num_samples <= 0, a key that is not a
//                       LoRA key of `global`, a shape other than
//                       TruncateRank(global, rank)'s, a dtype other than
//                       float32, or NaN/Inf values (naming the worker, the
//                       key, got and expected);
//   Internal            LibTorch failed in the math.
// `stats`, when not null, is filled on success.
StatusOr<TensorMap> HeteroAggregate(const HeteroOptions& options,
                                    const TensorMap& global,
                                    const TensorMap& init,
                                    const std::vector<HeteroUpdate>& updates,
                                    HeteroStats* stats = nullptr);

}  // namespace aggregation
}  // namespace fedpeft

#endif  // FEDPEFT_AGGREGATION_HETERO_RANK_H_
