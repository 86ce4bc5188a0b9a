#include "security/dp.h"

#include <openssl/rand.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/text.h"

namespace fedpeft {
namespace privacy {
namespace {}  // namespace

double GlobalNorm(const TensorMap& tensors) {
  double sum_sq = 0.0;
  for (const auto& [name, t] : tensors) {
    if (!t.defined() || t.numel() == 0) continue;
    // Squares summed in double: a float32 sum over millions of LoRA
    // elements would lose the digits the clip bound relies on.
    sum_sq += t.to(torch::kDouble).square().sum().item<double>();
  }
  return std::sqrt(sum_sq);
}

double ClipToNorm(TensorMap* tensors, double clip_norm) {
  const double norm = GlobalNorm(*tensors);
  if (!std::isfinite(norm)) {
    // A NaN/inf update has no meaningful direction; dropping it keeps the
    // sensitivity bound (and so the privacy guarantee) intact.
    for (auto& [name, t] : *tensors) {
      if (t.defined()) t.zero_();
    }
    return norm;
  }
  if (norm > clip_norm) {
    const double scale = clip_norm / norm;
    // In place: every alias of these tensors sees the clipped values.
    for (auto& [name, t] : *tensors) {
      if (t.defined()) t.mul_(scale);
    }
  }
  return norm;
}

GaussianNoise::GaussianNoise(uint64_t seed) : seeded_(seed != 0) {
  if (seeded_) rng_.seed(seed);
}

void GaussianNoise::Reseed(uint64_t seed) {
  if (seeded_) rng_.seed(seed);
}

uint64_t GaussianNoise::Next() {
  if (seeded_) return rng_();
  if (next_ == buffer_.size()) {
    buffer_.resize(512);
    // RAND_bytes fails only when the DRBG cannot be seeded from the OS;
    // noise that an attacker could predict would void the guarantee, so
    // there is no fallback.
    if (RAND_bytes(reinterpret_cast<unsigned char*>(buffer_.data()),
                   static_cast<int>(buffer_.size() * sizeof(uint64_t))) != 1) {
      std::fprintf(stderr,
                   "fedpeft: OpenSSL's RAND_bytes failed: no DP noise can be "
                   "drawn; stopping\n");
      std::abort();
    }
    next_ = 0;
  }
  return buffer_[next_++];
}

void GaussianNoise::AddTo(TensorMap* tensors, double stddev) {
  // N(0, stddev^2) depends on stddev^2 only, so a negative value means the
  // same distribution as its absolute value.
  stddev = std::fabs(stddev);
  if (stddev == 0.0) return;
  std::normal_distribution<double> normal(0.0, stddev);
  Bits bits{this};
  for (auto& [name, t] : *tensors) {
    if (!t.defined() || t.numel() == 0) continue;
    // Drawn on the CPU from our own generator (not torch's global one) so a
    // seed reproduces the noise exactly, whatever else uses torch's RNG.
    torch::Tensor noise = torch::empty({t.numel()}, torch::kDouble);
    double* data = noise.data_ptr<double>();
    for (int64_t i = 0; i < t.numel(); ++i) data[i] = normal(bits);
    t.add_(noise.view(t.sizes()).to(t.device(), t.scalar_type()));
  }
}

double GaussianNoise::Sample(double stddev) {
  stddev = std::fabs(stddev);
  if (stddev == 0.0) return 0.0;
  std::normal_distribution<double> normal(0.0, stddev);
  Bits bits{this};
  return normal(bits);
}

double NextClipNorm(double clip_norm, double unclipped_fraction,
                    double target_quantile, double learning_rate) {
  // Geometric update (Andrew et al. 2021, Section 2): b > gamma means the
  // clip norm sits above the target quantile of update norms, so it shrinks.
  return clip_norm *
         std::exp(-learning_rate * (unclipped_fraction - target_quantile));
}

StatusOr<double> UpdateNoiseMultiplier(double total_multiplier,
                                       double count_stddev) {
  if (!(total_multiplier > 0.0) || !std::isfinite(total_multiplier)) {
    return Status::InvalidArgument(
        "noise multiplier: got " + FormatG(total_multiplier) +
        ", expected a finite value > 0 with adaptive clipping");
  }
  // The count query sum_i (b_i - 1/2) has sensitivity 1/2, so its noise
  // multiplier is 2 * count_stddev; Gaussian mechanisms compose as
  // z^-2 = z_delta^-2 + (2 sigma_b)^-2 (Andrew et al. 2021, Theorem 1).
  const double inv_z2 = 1.0 / (total_multiplier * total_multiplier);
  const double inv_count2 = 1.0 / (4.0 * count_stddev * count_stddev);
  if (!(count_stddev > 0.0) || !(inv_z2 > inv_count2)) {
    return Status::InvalidArgument(
        "clipped-count noise stddev: got " + FormatG(count_stddev) +
        ", expected > noise multiplier / 2 = " +
        FormatG(total_multiplier / 2.0) +
        " (releasing the count alone would cost more than the budget; raise "
        "the count noise or the noise multiplier)");
  }
  return 1.0 / std::sqrt(inv_z2 - inv_count2);
}

}  // namespace privacy
}  // namespace fedpeft
