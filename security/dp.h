// The mechanisms of user-level DP-FedAvg (McMahan et al., "Learning
// Differentially Private Recurrent Language Models", ICLR 2018) with
// adaptive clipping (Andrew et al., "Differentially Private Learning with
// Adaptive Clipping", NeurIPS 2021):
//
//   worker:  delta <- delta * min(1, C / ||delta||)    (L2 over all tensors)
//   server:  sum of clipped deltas + N(0, (z C)^2 I), divided by the count
//
// and the clip-norm update of adaptive clipping:
//
//   b_i = 1 if ||delta_i|| <= C else 0     (the update was NOT clipped)
//   b   = (sum_i b_i + N(0, sigma_b^2)) / m
//   C  <- C * exp(-eta * (b - gamma))       (the paper's sign: when more
//                                           than gamma are unclipped, C is
//                                           too large and shrinks)
//
// Releasing the count costs privacy too; with total noise multiplier z the
// update's own multiplier is z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)
// (Andrew et al., Theorem 1), so the pair costs exactly what z alone would.
#ifndef FEDPEFT_SECURITY_DP_H_
#define FEDPEFT_SECURITY_DP_H_

#include <torch/torch.h>

#include <cstdint>
#include <random>
#include <vector>

#include "common/status.h"
#include "model/llama.h"  // TensorMap

namespace fedpeft {
namespace privacy {

// L2 norm over every element of every tensor (computed in double).
double GlobalNorm(const TensorMap& tensors);

// Scales every tensor by min(1, clip_norm / GlobalNorm) in place (every
// alias of the tensors sees it); returns the norm before clipping. An update
// whose norm is NaN or infinite is zeroed, which keeps the sensitivity bound.
// REQUIRES: clip_norm > 0.
double ClipToNorm(TensorMap* tensors, double clip_norm);

// A Gaussian sampler for DP noise. Seed 0 (the default, production): every
// draw comes from OpenSSL's DRBG (RAND_bytes), which an observer cannot
// predict or replay, so noise cannot be subtracted from a release. Any other
// seed: a std::mt19937_64, reproducible, for experiments and tests only (its
// output is predictable from the seed, and from a few hundred draws).
// Samples are double-precision normals (std::normal_distribution);
// floating-point attacks on the sampler (Mironov 2012) are not defended
// against.
//
// Thread-safety: not thread-safe; one owner.
class GaussianNoise {
 public:
  explicit GaussianNoise(uint64_t seed = 0);
  bool seeded() const { return seeded_; }
  // Seeded generators only: restarts the generator at `seed` (how the
  // coordinator derives fresh noise per round and attempt from one
  // configured seed). No-op for the DRBG.
  void Reseed(uint64_t seed);
  // Adds N(0, stddev^2) independently to every element of every tensor (in
  // place; float32 tensors). stddev == 0 leaves them unchanged. The draws
  // come from this object's generator in map order, so a fixed seed gives
  // the same noise on every platform with the same libstdc++.
  void AddTo(TensorMap* tensors, double stddev);
  // One N(0, stddev^2) sample.
  double Sample(double stddev);

 private:
  // A UniformRandomBitGenerator over this object's source.
  struct Bits {
    using result_type = uint64_t;
    static constexpr result_type min() { return 0; }
    static constexpr result_type max() { return ~result_type{0}; }
    result_type operator()() { return self->Next(); }
    GaussianNoise* self;
  };
  uint64_t Next();

  bool seeded_ = false;
  std::mt19937_64 rng_;           // seeded_
  std::vector<uint64_t> buffer_;  // !seeded_: DRBG output not used yet
  size_t next_ = 0;
};

// Adaptive clipping's clip-norm update (see above). REQUIRES: clip_norm > 0.
double NextClipNorm(double clip_norm, double unclipped_fraction,
                    double target_quantile, double learning_rate);

// The update's noise multiplier when the count of unclipped updates is
// released with noise stddev count_stddev and the pair must cost what
// total_multiplier costs. InvalidArgument when total_multiplier <= 0 or
// count_stddev <= total_multiplier / 2 (the count alone would cost the whole
// budget or more; Andrew et al. suggest count_stddev = m / 20).
StatusOr<double> UpdateNoiseMultiplier(double total_multiplier,
                                       double count_stddev);

}  // namespace privacy
}  // namespace fedpeft

#endif  // FEDPEFT_SECURITY_DP_H_
