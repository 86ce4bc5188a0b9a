// Adaptive Parameter Freezing (APF; Chen et al., ICDCS 2021, "Communication-
// Efficient Federated Learning with Adaptive Parameter Freezing"), applied per
// adapter TENSOR rather than per scalar: the server stops training, uploading
// and downloading tensors whose aggregated updates have stopped making
// progress (they oscillate around a value), for a period that grows while
// they stay stable, TCP-style (additive increase, multiplicative decrease).
//
// Stability. For each tensor, over the rounds it is observed (not frozen),
// with u_t the applied update (new global − old global) and β = ema:
//   E_t = β·E_{t−1} + (1 − β)·u_t          (tensor, E_0 = 0)
//   M_t = β·M_{t−1} + (1 − β)·‖u_t‖₂       (scalar, M_0 = 0)
//   P_t = ‖E_t‖₂ / M_t ∈ [0, 1]             (P = 0 when M = 0)
// P, the effective perturbation, is ≈1 when updates keep one direction and
// ≈0 when they cancel out. (E and M carry the same (1 − β^t) bias, which
// cancels in the ratio, so no bias correction is needed.)
//
// Freezing rule, applied by Observe(t, ·) to every tensor observed at round t
// (present in `applied` and not frozen at t), once it has at least
// warmup_rounds observations:
//   - stable (P < threshold):
//       if it has never been frozen, or this is its check (its first
//       observation after a freeze ended): period += period_step
//       (capped at max_period when max_period > 0);
//       otherwise (found unstable at an earlier check) the period is kept;
//       then it is frozen for rounds t+1 .. t+period.
//   - unstable (P >= threshold) at its check: period = max(1, period / 2)
//     (integer halving); it stays trainable.
//   - unstable otherwise: nothing changes.
// Before warmup the check, if pending, also waits. Frozen rounds do not touch
// E, M or the observation count: the statistics resume where they stopped.
//
// Tensors that are not in `applied` at a round where they are not frozen
// (e.g. a module no sampled worker trained) are not observed that round.
// A tensor whose shape changes (e.g. its rank under heterogeneous-rank
// "stack" aggregation) restarts its statistics (E, M, observations) but keeps
// its period.
//
// Thread-safety: an ApfController is used by the one thread that owns round
// state.
#ifndef FEDPEFT_PEFT_FREEZING_H_
#define FEDPEFT_PEFT_FREEZING_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "common/config.h"
#include "common/status.h"
#include "model/llama.h"  // TensorMap

namespace fedpeft {
namespace peft {

struct ApfOptions {
  bool enabled = false;       // off: the caller does not build a controller
  double threshold = 0.1;     // effective perturbation below this = stable;
                              // in (0, 1]
  double ema = 0.9;           // β of the EMAs of the update and its norm;
                              // in [0, 1)
  int64_t warmup_rounds = 3;  // observations before any freeze; >= 1
  int64_t period_step = 1;    // additive increase of the period (rounds);
                              // >= 1
  int64_t max_period = 0;     // cap on the period (rounds); 0 = no cap

  // Binds the keys of an "apf" section (enabled, threshold, ema,
  // warmup_rounds, period_step, max_period) and records range errors with
  // their key paths.
  void Read(ConfigReader& in);

  // The same range checks: InvalidArgument listing every problem as
  // "apf.<key>: ...".
  Status Validate() const;
};

class ApfController {
 public:
  // REQUIRES: options.Validate() is OK.
  explicit ApfController(ApfOptions options);

  const ApfOptions& options() const { return options_; }

  // The tensors frozen during `round` (1-based): not trained, uploaded or
  // downloaded in that round.
  std::set<std::string> FrozenAt(int64_t round) const;

  // Records the update the aggregation of round `round` applied: `applied`
  // = new global − old global per tensor (any dtype; read, never aliased).
  // Tensors frozen at `round` are ignored whatever `applied` holds for them.
  // Decides the freezes that start at round + 1 (see the rule above).
  // REQUIRES: rounds are observed in increasing order.
  void Observe(int64_t round, const TensorMap& applied);

  // |FrozenAt(round)| / num_tensors (0 when num_tensors is 0).
  double FrozenFraction(int64_t round, size_t num_tensors) const;

  // Everything Observe depends on, for checkpoints:
  //   {"version": 1, "tensors": {"<key>": {"shape": [..], "ema": "<base64
  //    of the float32 little-endian values of E>", "magnitude": M,
  //    "observations": n, "period": p, "frozen_from": a, "frozen_until": b,
  //    "pending_check": bool}}}
  // (frozen_from = frozen_until = 0: never frozen). Options are not saved:
  // they come from the run's config.
  nlohmann::json State() const;

  // Replaces the state with `state` (from State()). Validates everything
  // first and leaves the controller unchanged on error: InvalidArgument
  // naming the field ("apf state: tensors.'<key>'.period: ...").
  Status LoadState(const nlohmann::json& state);

 private:
  struct TensorState {
    torch::Tensor ema;     // E, float32 on CPU; undefined before any
                           // observation
    double magnitude = 0;  // M
    int64_t observations = 0;
    int64_t period = 0;       // 0 = never frozen
    int64_t frozen_from = 0;  // frozen for rounds [frozen_from, frozen_until]
    int64_t frozen_until = 0;
    bool pending_check = false;  // the next observation is its check
  };

  void Decide(int64_t round, TensorState& s) const;

  ApfOptions options_;
  std::map<std::string, TensorState> tensors_;
};

}  // namespace peft
}  // namespace fedpeft

#endif  // FEDPEFT_PEFT_FREEZING_H_
