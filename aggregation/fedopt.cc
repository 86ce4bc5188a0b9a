#include "aggregation/fedopt.h"

#include "aggregation/mean.h"

namespace fedpeft {
namespace aggregation {
namespace {

constexpr char kMomentumKind[] = "momentum";
constexpr char kFirstMomentKind[] = "m";
constexpr char kSecondMomentKind[] = "v";

TensorMap WithKind(const std::string& kind, const TensorMap& tensors) {
  TensorMap out;
  for (const auto& [key, t] : tensors) out.emplace(kind + "/" + key, t.clone());
  return out;
}

}  // namespace

StatusOr<TensorMap> FedAvgM::Aggregate(
    const RoundContext& ctx, const TensorMap& global,
    const std::vector<ClientUpdate>& updates) {
  RETURN_IF_ERROR(CheckAggregateInputs(name(), global, updates));
  if (!velocity_.empty()) {
    RETURN_IF_ERROR(
        CheckStateMatchesGlobal(name(), kMomentumKind, velocity_, global));
  }
  try {
    const std::vector<double> weights = ClientWeights(updates, weighted_);
    TensorMap velocity;
    TensorMap out;
    for (const auto& [key, g] : global) {
      // v = Δ̄ + β v_prev; with no previous state v_prev = 0, so v = Δ̄.
      torch::Tensor v = WeightedMeanDelta(key, updates, weights);
      if (!velocity_.empty()) v.add_(velocity_.at(key), momentum_);
      out.emplace(key, torch::add(g, v, server_lr_));
      velocity.emplace(key, std::move(v));
    }
    velocity_ = std::move(velocity);  // commit only after every key succeeded
    return out;
  } catch (const std::exception& e) {
    return Status::Internal(name() + ": aggregation failed in round " +
                            std::to_string(ctx.round) + ": " + e.what());
  }
}

TensorMap FedAvgM::State() const { return WithKind(kMomentumKind, velocity_); }

Status FedAvgM::LoadState(const TensorMap& state) {
  std::vector<TensorMap> by_kind;
  RETURN_IF_ERROR(SplitState(name(), state, {kMomentumKind}, &by_kind));
  velocity_ = std::move(by_kind[0]);
  return Status::Ok();
}

StatusOr<TensorMap> FedAdaptive::Aggregate(
    const RoundContext& ctx, const TensorMap& global,
    const std::vector<ClientUpdate>& updates) {
  RETURN_IF_ERROR(CheckAggregateInputs(name(), global, updates));
  if (!m_.empty()) {
    RETURN_IF_ERROR(
        CheckStateMatchesGlobal(name(), kFirstMomentKind, m_, global));
    RETURN_IF_ERROR(
        CheckStateMatchesGlobal(name(), kSecondMomentKind, v_, global));
  }
  try {
    const std::vector<double> weights = ClientWeights(updates, weighted_);
    const bool first_round = m_.empty();
    TensorMap m_next;
    TensorMap v_next;
    TensorMap out;
    for (const auto& [key, g] : global) {
      const torch::Tensor delta = WeightedMeanDelta(key, updates, weights);
      // m_{-1} = 0 (so β1 m_{-1} vanishes exactly); v_{-1} = τ².
      torch::Tensor m = torch::mul(delta, 1.0 - beta1_);
      if (!first_round) m.add_(m_.at(key), beta1_);
      const torch::Tensor v_prev =
          first_round ? torch::full_like(g, tau_ * tau_) : v_.at(key);
      torch::Tensor v;
      if (variant_ == Variant::kAdam) {
        v = torch::mul(v_prev, beta2_).addcmul_(delta, delta, 1.0 - beta2_);
      } else {
        const torch::Tensor delta_sq = delta * delta;
        v = torch::addcmul(v_prev, delta_sq, torch::sign(v_prev - delta_sq),
                           -(1.0 - beta2_));
      }
      // x + η m / (sqrt(v) + τ)
      out.emplace(key,
                  torch::addcdiv(g, m, torch::sqrt(v).add_(tau_), server_lr_));
      m_next.emplace(key, std::move(m));
      v_next.emplace(key, std::move(v));
    }
    m_ = std::move(m_next);  // commit only after every key succeeded
    v_ = std::move(v_next);
    return out;
  } catch (const std::exception& e) {
    return Status::Internal(name() + ": aggregation failed in round " +
                            std::to_string(ctx.round) + ": " + e.what());
  }
}

TensorMap FedAdaptive::State() const {
  TensorMap out = WithKind(kFirstMomentKind, m_);
  out.merge(WithKind(kSecondMomentKind, v_));
  return out;
}

Status FedAdaptive::LoadState(const TensorMap& state) {
  std::vector<TensorMap> by_kind;
  RETURN_IF_ERROR(SplitState(name(), state,
                             {kFirstMomentKind, kSecondMomentKind}, &by_kind));
  for (const auto& [key, v] : by_kind[1]) {
    if ((v < 0).any().item<bool>()) {
      return Status::InvalidArgument(
          name() + " state: key '" + std::string(kSecondMomentKind) + "/" +
          key + "': the second moment must be >= 0, got negative values");
    }
  }
  m_ = std::move(by_kind[0]);
  v_ = std::move(by_kind[1]);
  return Status::Ok();
}

}  // namespace aggregation
}  // namespace fedpeft
