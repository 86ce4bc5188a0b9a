// Per-worker LoRA rank assignment for heterogeneous-rank federations: the
// server gives each worker the largest rank its device can train within the
// round deadline and its memory, adjusts it from round to round by what it
// observes (AIMD: halve on a missed deadline, grow when a round finished
// early), and a worker can prune components it no longer uses.
//
// Cost model for rank r (every term that depends on an unknown figure, 0 in
// DeviceProfile, is left out, so unknown figures never constrain):
//   memory(r) = 16·params_per_rank·r            adapter fp32 weights,
//                                                gradients, AdamW m and v
//               + act_bytes_fixed + act_bytes_per_rank·r
//   time(r)   = tokens_per_round / tokens_per_second · (1 + compute_per_rank·r)
//               + 2·params_per_rank·r·upload_bytes_per_param
//                 / uplink_bytes_per_second  (upload and download, both
//                                             charged at the uplink rate, the
//                                             slower direction on most links)
// A rank fits when memory(r) <= ram_bytes and time(r) <= safety·deadline_s.
// DeviceProfile::tokens_per_second is the base model's training throughput
// without the adapter's overhead (compute_per_rank models that).
//
// Thread-safety: free functions without shared state.
#ifndef FEDPEFT_PEFT_RANK_ASSIGNMENT_H_
#define FEDPEFT_PEFT_RANK_ASSIGNMENT_H_

#include <cstdint>

#include "common/config.h"
#include "common/status.h"
#include "model/llama.h"  // TensorMap

namespace fedpeft {
namespace peft {

struct RankPolicy {
  int64_t r_min = 2;        // lowest rank ever assigned; >= 1
  int64_t r_max = 16;       // highest rank ever assigned; >= r_min
  double safety = 0.8;      // plan to use this share of the deadline;
                            // in (0, 1]
  double grow_below = 0.5;  // a round finished within this share of the
                            // deadline grows the rank; in (0, 1]

  // Binds r_min, r_max, safety, grow_below and records range errors with
  // their key paths.
  void Read(ConfigReader& in);

  // The same checks: InvalidArgument listing every problem.
  Status Validate() const;
};

// What one unit of rank costs for a given model and training setup.
struct AdapterCost {
  int64_t params_per_rank = 0;        // Σ over LoRA modules of (in + out)
  int64_t tokens_per_round = 0;       // local steps · batch · seq_len
  int64_t act_bytes_fixed = 0;        // bytes held whatever the rank
                                      // (activations; add the frozen base here
                                      // to count it)
  int64_t act_bytes_per_rank = 0;     // activation bytes per unit of rank
  double upload_bytes_per_param = 4;  // 4 = fp32 on the wire
  // Fractional slowdown of a training step per unit of rank, e.g.
  // 6·params_per_rank / (training FLOPs per token of the base).
  double compute_per_rank = 0;
};

// What is known about a worker's device; 0 = unknown.
struct DeviceProfile {
  uint64_t ram_bytes = 0;
  double tokens_per_second = 0;  // base training throughput (see above)
  double uplink_bytes_per_second = 0;
};

// The largest rank in [r_min, r_max] that fits the device's memory and
// safety · deadline_s (deadline_s <= 0: no deadline); r_min if even r_min
// does not fit (the caller logs that). REQUIRES: policy.Validate() is OK.
int64_t InitialRank(const RankPolicy& policy, const AdapterCost& cost,
                    const DeviceProfile& device, double deadline_s);

// How a worker's last round went.
struct RoundObservation {
  bool answered = false;         // it sent an update
  bool missed_deadline = false;  // it did not answer within the deadline
  double seconds = 0;            // wall time from task to update, if answered
  // Measured training throughput at the current rank (0 = not reported).
  double tokens_per_second = 0;
};

// Next round's rank, from `current` (clamped to [r_min, r_max] first):
//   missed_deadline                      -> max(r_min, current / 2)
//   answered within grow_below·deadline  -> grow towards
//       min(r_max, current + max(1, current / 2)): the largest rank up to
//       there that fits memory and whose predicted round time fits
//       safety·deadline; `current` if none does.
//   otherwise (incl. not answered without a miss: not sampled) -> current.
// Predicted time: the cost model with tokens_per_second replaced by the
// measured one (converted to the base rate) when reported, scaled so that it
// reproduces the measured `seconds` at `current`:
//   predicted(r) = seconds · time(r) / time(current)
// (predicted = seconds when the model has no known term). With
// deadline_s <= 0 the rank never grows. REQUIRES: policy.Validate() is OK.
int64_t NextRank(const RankPolicy& policy, const AdapterCost& cost,
                 const DeviceProfile& device, double deadline_s,
                 int64_t current, const RoundObservation& observation);

// Self-pruning on the worker. Per LoRA module (complete A/B pairs of
// `adapter`; other keys ignored) the component norms are
// c_i = ‖B[:, i]‖·‖A[i, :]‖. Returns the smallest r' such that in every module
// all components with c_i >= threshold · max_i c_i have index < r', and at
// least 1. A module whose components are all zero keeps its full rank (all
// satisfy c_i >= 0). threshold <= 0 returns the current rank (the largest
// module rank, at least 1).
int64_t PrunedRank(const TensorMap& adapter, double threshold);

}  // namespace peft
}  // namespace fedpeft

#endif  // FEDPEFT_PEFT_RANK_ASSIGNMENT_H_
