#include "security/rdp_accountant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "common/text.h"

namespace fedpeft {
namespace privacy {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// The series for fractional orders stops once both new terms are
// decreasing and below exp(kLogTermCutoff) times the sum so far (the
// criterion of today's dp_accounting; TF Privacy compared with exp(-30)
// absolutely, which also stops when the terms are still growing).
// kMaxSeriesTerms only guards against a series that does not converge in
// floating point.
constexpr double kLogTermCutoff = -30.0;
constexpr int kMaxSeriesTerms = 100000;

// Orders at or below this are useless for the conversion: its
// log1p(-1/alpha) term diverges at 1 (dp_accounting uses the same cut-off).
constexpr double kMinConvertibleOrder = 1.01;

// NoiseMultiplierFor's search range and precision.
constexpr double kMaxNoiseMultiplier = 1e4;
constexpr double kRelativePrecision = 1e-4;

// log(exp(a) + exp(b)) without overflow; -inf stands for 0.
double LogAdd(double log_x, double log_y) {
  const double lo = std::min(log_x, log_y);
  const double hi = std::max(log_x, log_y);
  if (lo == kNegInf) return hi;
  return hi + std::log1p(std::exp(lo - hi));
}

// log(exp(a) - exp(b)) for a >= b. A negative difference can only come from
// rounding in an alternating series whose exact partial sums are positive;
// it is clamped to 0 (-inf).
double LogSub(double log_x, double log_y) {
  if (log_y == kNegInf) return log_x;
  if (log_x <= log_y) return kNegInf;
  // exp(x) - exp(y) = exp(x) * (1 - exp(y - x)); y - x < 0 so no overflow.
  return log_x + std::log(-std::expm1(log_y - log_x));
}

// log(erfc(x)), accurate where erfc(x) underflows (x beyond ~26).
double LogErfc(double x) {
  if (x < 25.0) return std::log(std::erfc(x));
  // Asymptotic expansion: erfc(x) = exp(-x^2) / (x sqrt(pi)) *
  //   (1 - 1/(2x^2) + 3/(2x^2)^2 - 15/(2x^2)^3 + 105/(2x^2)^4 - ...).
  // At x >= 25 the first omitted term is below 1e-13.
  const double u = 1.0 / (2.0 * x * x);
  const double series =
      1.0 - u * (1.0 - 3.0 * u * (1.0 - 5.0 * u * (1.0 - 7.0 * u)));
  return -x * x - std::log(x) - 0.5 * std::log(M_PI) + std::log(series);
}

// log(A_alpha) for integer alpha >= 2 and 0 < q < 1 (Mironov et al. 2019,
// Section 3.3): A_alpha = sum_i C(alpha, i) q^i (1-q)^(alpha-i)
//                                     * exp((i^2 - i) / (2 sigma^2)).
double LogAInt(double q, double sigma, int64_t alpha) {
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double lg_alpha = std::lgamma(static_cast<double>(alpha) + 1.0);
  double log_a = kNegInf;
  for (int64_t i = 0; i <= alpha; ++i) {
    const double di = static_cast<double>(i);
    const double log_binom = lg_alpha - std::lgamma(di + 1.0) -
                             std::lgamma(static_cast<double>(alpha - i) + 1.0);
    const double term = log_binom + di * log_q +
                        static_cast<double>(alpha - i) * log_1mq +
                        (di * di - di) / (2.0 * sigma * sigma);
    log_a = LogAdd(log_a, term);
  }
  return log_a;
}

// log(A_alpha) for fractional alpha > 1 and 0 < q < 1 (Mironov et al. 2019,
// Section 3.3). The integral defining A_alpha is split at
// z0 = sigma^2 log(1/q - 1) + 1/2, where the two mixture components cross;
// on each side (1-q + q e^{...})^alpha is expanded with the generalized
// binomial series, which converges there, giving
//   A0 = sum_i C(alpha,i) q^i (1-q)^(alpha-i) e^{(i^2-i)/(2s^2)}
//                                        * erfc((i - z0)/(sqrt2 s)) / 2
//   A1 = sum_i C(alpha,i) q^(alpha-i) (1-q)^i e^{(j^2-j)/(2s^2)}
//                                        * erfc((z0 - j)/(sqrt2 s)) / 2
// with j = alpha - i. C(alpha, i) changes sign for i > alpha + 1, so both
// sums are kept in log space with signed accumulation.
double LogAFrac(double q, double sigma, double alpha) {
  const double log_q = std::log(q);
  const double log_1mq = std::log1p(-q);
  const double z0 = sigma * sigma * (std::log(1.0 / q - 1.0)) + 0.5;
  const double sqrt2_sigma = std::sqrt(2.0) * sigma;
  const double two_sigma2 = 2.0 * sigma * sigma;
  const double log_half = std::log(0.5);

  double log_a0 = kNegInf;
  double log_a1 = kNegInf;
  // log|C(alpha, i)| and its sign, updated by C(a,i) = C(a,i-1)(a-i+1)/i.
  double log_abs_binom = 0.0;
  bool binom_positive = true;
  double last_s0 = kNegInf;  // no previous term yet: never stop at i = 0
  double last_s1 = kNegInf;
  for (int i = 0; i < kMaxSeriesTerms; ++i) {
    if (i > 0) {
      const double factor = alpha - i + 1.0;
      if (factor == 0.0) break;  // Only for integer alpha; not used here.
      log_abs_binom +=
          std::log(std::fabs(factor)) - std::log(static_cast<double>(i));
      if (factor < 0.0) binom_positive = !binom_positive;
    }
    const double di = static_cast<double>(i);
    const double j = alpha - di;
    const double log_t0 = log_abs_binom + di * log_q + j * log_1mq;
    const double log_t1 = log_abs_binom + j * log_q + di * log_1mq;
    const double log_e0 = log_half + LogErfc((di - z0) / sqrt2_sigma);
    const double log_e1 = log_half + LogErfc((z0 - j) / sqrt2_sigma);
    const double log_s0 = log_t0 + (di * di - di) / two_sigma2 + log_e0;
    const double log_s1 = log_t1 + (j * j - j) / two_sigma2 + log_e1;
    if (binom_positive) {
      log_a0 = LogAdd(log_a0, log_s0);
      log_a1 = LogAdd(log_a1, log_s1);
    } else {
      log_a0 = LogSub(log_a0, log_s0);
      log_a1 = LogSub(log_a1, log_s1);
    }
    if (std::isnan(log_s0) || std::isnan(log_s1)) return kInf;
    const double total = LogAdd(log_a0, log_a1);
    if (log_s0 < last_s0 && log_s1 < last_s1 &&
        std::max(log_s0, log_s1) < total + kLogTermCutoff) {
      return total;
    }
    last_s0 = log_s0;
    last_s1 = log_s1;
  }
  return kInf;  // Did not converge: no finite bound claimed.
}

}  // namespace

std::vector<double> DefaultOrders() {
  // Opacus's grid (1.1, 1.2, ..., 10.9, then 11..63), extended by 64 and the
  // large orders TF Privacy's calculator uses. Fractional orders near 1 give
  // the best bound when epsilon is large (little noise, many rounds); large
  // orders when epsilon is small (much noise). Multiples of 0.1 that are
  // integers come out exact (1 + 10/10.0 == 2.0), so they take the exact
  // integer formula.
  std::vector<double> orders;
  for (int x = 1; x < 100; ++x) orders.push_back(1.0 + x / 10.0);
  for (int a = 11; a <= 64; ++a) orders.push_back(a);
  for (double a : {128.0, 256.0, 512.0}) orders.push_back(a);
  return orders;
}

double SampledGaussianRdp(double q, double noise_multiplier, double order) {
  if (q == 0.0) return 0.0;
  if (noise_multiplier == 0.0) return kInf;
  if (q == 1.0) {
    return order / (2.0 * noise_multiplier * noise_multiplier);
  }
  // Out-of-contract inputs claim no privacy rather than a wrong bound.
  if (!(q > 0.0 && q < 1.0) || !(noise_multiplier > 0.0) || !(order > 1.0) ||
      std::isinf(order) || std::isnan(order)) {
    return kInf;
  }
  double log_a;
  if (std::floor(order) == order && order <= 1e6) {
    log_a = LogAInt(q, noise_multiplier, static_cast<int64_t>(order));
  } else {
    log_a = LogAFrac(q, noise_multiplier, order);
  }
  if (std::isnan(log_a)) return kInf;
  // RDP of a mixture is non-negative; clamp rounding noise near q -> 0.
  return std::max(0.0, log_a / (order - 1.0));
}

PrivacySpent EpsilonFromRdp(const std::vector<double>& orders,
                            const std::vector<double>& rdp, double delta) {
  PrivacySpent best;
  best.epsilon = kInf;
  best.order = orders.empty() ? 0.0 : orders.front();
  if (orders.size() != rdp.size() || !(delta > 0.0 && delta < 1.0)) {
    return best;
  }
  // A negative or NaN RDP value is not a valid guarantee (dp_accounting
  // raises an error here); with no Status to return, claim no privacy.
  for (double r : rdp) {
    if (std::isnan(r) || r < 0.0) return best;
  }
  const double log_delta = std::log(delta);
  for (size_t i = 0; i < orders.size(); ++i) {
    const double a = orders[i];
    const double r = rdp[i];
    double eps;
    if (delta * delta + std::expm1(-r) > 0.0) {
      // Pinsker-style bound via the KL divergence (the RDP at order >= 1
      // bounds it): delta <= sqrt(1 - exp(-KL)), so (0, delta)-DP holds.
      eps = 0.0;
    } else if (a > kMinConvertibleOrder && std::isfinite(a)) {
      eps = r + std::log1p(-1.0 / a) - (log_delta + std::log(a)) / (a - 1.0);
    } else {
      eps = kInf;
    }
    if (eps < best.epsilon) {
      best.epsilon = eps;
      best.order = a;
    }
  }
  best.epsilon = std::max(0.0, best.epsilon);
  return best;
}

RdpAccountant::RdpAccountant(std::vector<double> orders)
    : orders_(std::move(orders)), rdp_(orders_.size(), 0.0) {}

void RdpAccountant::Compose(double q, double noise_multiplier, int64_t steps) {
  if (steps <= 0) return;
  for (size_t i = 0; i < orders_.size(); ++i) {
    const double r = SampledGaussianRdp(q, noise_multiplier, orders_[i]);
    if (r == 0.0) continue;  // Also avoids 0 * inf.
    rdp_[i] += static_cast<double>(steps) * r;
  }
}

PrivacySpent RdpAccountant::Spent(double delta) const {
  return EpsilonFromRdp(orders_, rdp_, delta);
}

Status RdpAccountant::SetRdp(const std::vector<double>& rdp) {
  if (rdp.size() != orders_.size()) {
    return Status::InvalidArgument(
        "RDP values: got " + std::to_string(rdp.size()) +
        " values, expected one per order (" + std::to_string(orders_.size()) +
        "); was the checkpoint written with different orders?");
  }
  for (size_t i = 0; i < rdp.size(); ++i) {
    if (std::isnan(rdp[i]) || rdp[i] < 0.0) {
      return Status::InvalidArgument(
          "RDP value at order " + FormatG(orders_[i]) + ": got " +
          FormatG(rdp[i]) + ", expected a number >= 0 (or +inf)");
    }
  }
  rdp_ = rdp;
  return Status::Ok();
}

PrivacySpent ComputeEpsilon(double q, double noise_multiplier, int64_t steps,
                            double delta) {
  RdpAccountant accountant;
  accountant.Compose(q, noise_multiplier, steps);
  return accountant.Spent(delta);
}

StatusOr<double> NoiseMultiplierFor(double target_epsilon, double q,
                                    int64_t steps, double delta) {
  if (!(q > 0.0 && q <= 1.0)) {
    return Status::InvalidArgument("sampling rate: got " + FormatG(q) +
                                   ", expected a value in (0, 1]");
  }
  if (steps < 1) {
    return Status::InvalidArgument("steps: got " + std::to_string(steps) +
                                   ", expected >= 1");
  }
  if (!(delta > 0.0 && delta < 1.0)) {
    return Status::InvalidArgument("delta: got " + FormatG(delta) +
                                   ", expected a value in (0, 1)");
  }
  if (!(target_epsilon > 0.0) || std::isnan(target_epsilon)) {
    return Status::InvalidArgument("target epsilon: got " +
                                   FormatG(target_epsilon) + ", expected > 0");
  }
  // One accountant's orders, reused for every trial multiplier.
  const std::vector<double> orders = DefaultOrders();
  auto epsilon_at = [&](double z) {
    RdpAccountant accountant(orders);
    accountant.Compose(q, z, steps);
    return accountant.Spent(delta).epsilon;
  };
  // epsilon decreases in z (the RDP at every order does), so bracket the
  // smallest z meeting the target between `lo` (misses) and `hi` (meets).
  double hi = 1.0;
  while (epsilon_at(hi) > target_epsilon) {
    if (hi >= kMaxNoiseMultiplier) {
      return Status::InvalidArgument(
          "target epsilon " + FormatG(target_epsilon) +
          " is out of reach: even noise multiplier " +
          FormatG(kMaxNoiseMultiplier) + " gives epsilon " +
          FormatG(epsilon_at(kMaxNoiseMultiplier)) + " at q " + FormatG(q) +
          ", " + std::to_string(steps) + " steps, delta " + FormatG(delta) +
          " (raise the target or delta, or use fewer steps)");
    }
    hi = std::min(2.0 * hi, kMaxNoiseMultiplier);
  }
  double lo = hi / 2.0;
  // z -> 0 gives epsilon -> inf, so this ends; the cap only guards against
  // floating point reaching a denormal z.
  for (int i = 0; i < 1100 && epsilon_at(lo) <= target_epsilon; ++i) {
    hi = lo;
    lo /= 2.0;
  }
  while (hi - lo > kRelativePrecision * hi) {
    const double mid = 0.5 * (lo + hi);
    if (epsilon_at(mid) <= target_epsilon) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

}  // namespace privacy
}  // namespace fedpeft
