// Server optimizers on the pseudo-gradient: the weighted mean client delta
// Δ̄ (weighted by num_samples, or uniform when !weighted) is treated as a
// step direction and fed to a stateful optimizer on the server.
//
//   fedavgm (Hsu, Qi, Brown 2019, "Measuring the Effects of Non-Identical
//   Data Distribution for Federated Visual Classification", server momentum):
//     v ← β v + Δ̄          (v starts at 0, so the first round gives v = Δ̄)
//     x ← x + server_lr · v
//   With β = 0 and server_lr = 1 this is FedAvg.
//
//   fedadam / fedyogi (Reddi et al. 2021, "Adaptive Federated Optimization",
//   Algorithm 2, FedAdam and FedYogi lines), element-wise:
//     m_t = β1 m_{t-1} + (1 - β1) Δ̄
//     adam: v_t = β2 v_{t-1} + (1 - β2) Δ̄²
//     yogi: v_t = v_{t-1} - (1 - β2) Δ̄² sign(v_{t-1} - Δ̄²)
//     x_{t+1} = x_t + η m_t / (sqrt(v_t) + τ)
//   Choices, both following the paper rather than a particular library:
//   - No bias correction: Algorithm 2 has none (Flower's FedAdam/FedYogi
//     follow it; Flower later added one to FedAdam, which we do not).
//   - m_{-1} = 0 and v_{-1} = τ²: Algorithm 2 takes "v_{-1} ≥ τ²" as input and
//     we use the smallest allowed value. (Flower starts v at 0, which the
//     paper's precondition excludes; with τ = 1e-3 the two differ only while
//     Δ̄² is below ~1e-6.) Yogi keeps v ≥ 0: if v > Δ̄² it drops by at most
//     (1 - β2) Δ̄² < Δ̄² < v, else it grows.
//   η is StrategyOptions::server_lr; τ is StrategyOptions::tau.
//
// State for checkpoints, keyed "<kind>/<PEFT key>": fedavgm "momentum/...";
// fedadam and fedyogi "m/..." and "v/...". No step count is kept (nothing
// depends on it without bias correction). A strategy restored with
// LoadState(State()) computes bit-identical rounds to the uninterrupted one.
// Before the first round the state is empty; restored state must match the
// global adapter's keys and shapes at the next Aggregate (else
// FailedPrecondition, and the state is left unchanged).
//
// Aggregate is all-or-nothing: on error the optimizer state is unchanged.
//
// Thread-safety: as Strategy (one owning thread).
#ifndef FEDPEFT_AGGREGATION_FEDOPT_H_
#define FEDPEFT_AGGREGATION_FEDOPT_H_

#include <string>
#include <vector>

#include "aggregation/strategy.h"

namespace fedpeft {
namespace aggregation {

class FedAvgM : public Strategy {
 public:
  // REQUIRES: server_lr > 0, momentum in [0, 1).
  FedAvgM(double server_lr, double momentum, bool weighted)
      : server_lr_(server_lr), momentum_(momentum), weighted_(weighted) {}

  std::string name() const override { return "fedavgm"; }

  // Returns fresh tensors; `global` and the updates are not modified.
  StatusOr<TensorMap> Aggregate(
      const RoundContext& ctx, const TensorMap& global,
      const std::vector<ClientUpdate>& updates) override;

  // "momentum/<PEFT key>" (copies); empty before the first round.
  TensorMap State() const override;
  // Takes copies. Empty state resets to the first-round state.
  Status LoadState(const TensorMap& state) override;

 private:
  const double server_lr_;
  const double momentum_;
  const bool weighted_;
  TensorMap velocity_;  // PEFT key -> v; empty before the first round
};

class FedAdaptive : public Strategy {
 public:
  enum class Variant { kAdam, kYogi };

  // REQUIRES: server_lr > 0, beta1 and beta2 in [0, 1), tau > 0.
  FedAdaptive(Variant variant, double server_lr, double beta1, double beta2,
              double tau, bool weighted)
      : variant_(variant),
        server_lr_(server_lr),
        beta1_(beta1),
        beta2_(beta2),
        tau_(tau),
        weighted_(weighted) {}

  std::string name() const override {
    return variant_ == Variant::kAdam ? "fedadam" : "fedyogi";
  }

  // Returns fresh tensors; `global` and the updates are not modified.
  StatusOr<TensorMap> Aggregate(
      const RoundContext& ctx, const TensorMap& global,
      const std::vector<ClientUpdate>& updates) override;

  // "m/<PEFT key>" and "v/<PEFT key>" (copies); empty before the first
  // round.
  TensorMap State() const override;
  // Takes copies. Empty state resets to the first-round state.
  Status LoadState(const TensorMap& state) override;

 private:
  const Variant variant_;
  const double server_lr_;
  const double beta1_;
  const double beta2_;
  const double tau_;
  const bool weighted_;
  TensorMap m_;  // PEFT key -> first moment; empty before the first round
  TensorMap v_;  // PEFT key -> second moment; empty before the first round
};

}  // namespace aggregation
}  // namespace fedpeft

#endif  // FEDPEFT_AGGREGATION_FEDOPT_H_
