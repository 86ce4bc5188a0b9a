// Privacy accounting for user-level DP-FedAvg: Rényi differential privacy
// (RDP) of the Poisson-subsampled Gaussian mechanism, composed over rounds
// and converted to (epsilon, delta).
//
//   RdpAccountant acc;                     // default grid of orders
//   acc.Compose(/*q=*/0.1, /*z=*/1.1);     // one round
//   PrivacySpent s = acc.Spent(/*delta=*/1e-5);   // s.epsilon, s.order
//
// One round of DP-FedAvg is one application of the sampled Gaussian
// mechanism: each user takes part with probability q, the sum of clipped
// updates (sensitivity C) gets N(0, z^2 C^2) noise. Its RDP at order alpha
// is computed as in Mironov, Talwar and Zhang, "Rényi Differential Privacy
// of the Sampled Gaussian Mechanism" (2019): a closed binomial sum for
// integer orders and a convergent series for fractional ones, in log space.
// Composition adds RDP order by order. The conversion to (epsilon, delta) is
// the improved one of Balle et al. 2020 ("Hypothesis testing interpretations
// and Rényi differential privacy") / Canonne, Kamath and Steinke 2020:
//   epsilon = rdp + log1p(-1/alpha) - (log(delta) + log(alpha)) / (alpha - 1)
// minimised over the orders.
//
// Thread-safety: none; a coordinator owns one accountant.
#ifndef FEDPEFT_SECURITY_RDP_ACCOUNTANT_H_
#define FEDPEFT_SECURITY_RDP_ACCOUNTANT_H_

#include <cstdint>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace privacy {

// The orders the accountant tracks by default: fractional orders near 1
// (which matter for large epsilon), every integer up to 64, and a few large
// ones (which matter for small epsilon and large noise). Exactly: 1.1, 1.2,
// ..., 10.9 (Opacus's grid), 11, 12, ..., 64, then 128, 256, 512.
std::vector<double> DefaultOrders();

// RDP at `order` (> 1) of one step of the sampled Gaussian mechanism with
// sampling rate q in [0, 1] and noise multiplier z >= 0 (standard deviation
// over sensitivity). q = 0 gives 0; z = 0 with q > 0 gives +infinity; q = 1
// gives the Gaussian mechanism's order / (2 z^2). Integer orders use the
// exact binomial sum, others the convergent series; both in log space.
// Inputs outside the contract (and an infinite order) give +infinity: no
// privacy is claimed rather than a wrong bound.
double SampledGaussianRdp(double q, double noise_multiplier, double order);

struct PrivacySpent {
  double epsilon = 0;  // +infinity when no order gives a finite bound
  double order = 0;    // the order that attains it
};

// (epsilon, delta) from RDP values at `orders` with the improved conversion,
// with dp_accounting's edge cases: an order whose RDP is so small that
// delta^2 + expm1(-rdp) > 0 gives epsilon 0 (the KL bound); orders <= 1.01
// give +infinity. The minimum over orders is clamped at 0.
// REQUIRES: orders.size() == rdp.size(), 0 < delta < 1, every rdp >= 0;
// when violated the result is +infinity (no privacy claimed).
PrivacySpent EpsilonFromRdp(const std::vector<double>& orders,
                            const std::vector<double>& rdp, double delta);

class RdpAccountant {
 public:
  explicit RdpAccountant(std::vector<double> orders = DefaultOrders());

  // Composes `steps` rounds with sampling rate q and noise multiplier z:
  // adds steps * SampledGaussianRdp(q, z, order) at every order. steps <= 0
  // composes nothing.
  void Compose(double q, double noise_multiplier, int64_t steps = 1);
  // Privacy spent so far at `delta`.
  PrivacySpent Spent(double delta) const;

  const std::vector<double>& orders() const { return orders_; }
  const std::vector<double>& rdp() const { return rdp_; }
  // For checkpoints: the accumulated RDP values (same orders).
  // InvalidArgument (and no change) when the count differs from orders()
  // or a value is negative or NaN.
  Status SetRdp(const std::vector<double>& rdp);

 private:
  std::vector<double> orders_;
  std::vector<double> rdp_;
};

// Epsilon after `steps` rounds of the sampled Gaussian mechanism.
PrivacySpent ComputeEpsilon(double q, double noise_multiplier, int64_t steps,
                            double delta);

// The smallest noise multiplier (to relative precision 1e-4) whose epsilon
// after `steps` rounds (DefaultOrders()) is at most target_epsilon: the
// result z meets the target and z * (1 - 1e-4) does not. InvalidArgument for
// arguments out of range (q outside (0, 1], steps < 1, delta outside (0, 1),
// target_epsilon <= 0) and, with a message saying so, when no multiplier up
// to 1e4 meets the target (Status has no OutOfRange code).
StatusOr<double> NoiseMultiplierFor(double target_epsilon, double q,
                                    int64_t steps, double delta);

}  // namespace privacy
}  // namespace fedpeft

#endif  // FEDPEFT_SECURITY_RDP_ACCOUNTANT_H_
