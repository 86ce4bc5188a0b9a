// Fixed-point encoding of real-valued updates into Z_2^32, the group secure
// aggregation (security/secagg.h) sums in.
//
//   q_i = StochasticRound(value_i / scale)      an int32, E[q_i] =
//   value_i/scale word_i = q_i mod 2^32                       two's complement
//   sum of words (mod 2^32), read as int32, times scale = sum of q_i * scale
//
// Decoding is exact, with no wrap-around, only while the true integer sum
// stays in int32: for n clients whose values are bounded by |value| <= bound,
//   n * (bound / scale + 1) < 2^31          (the +1: rounding up)
// ChooseFixedPointScale picks the finest scale with a factor 2 to spare;
// CheckFixedPointHeadroom checks a given one. Masking cannot detect an
// overflow (the sum is uniform-looking until unmasked), so the bound must
// hold by construction: for a DP-clipped update (L2 norm <= C) every
// coordinate is within C, so bound = C. With n = 10 and C = 1 the scale is
// about 1e-8, far below the error of 8-bit quantization.
//
// Thread-safety: reentrant; the caller owns the generator.
#ifndef FEDPEFT_SECURITY_SECAGG_FIXED_POINT_H_
#define FEDPEFT_SECURITY_SECAGG_FIXED_POINT_H_

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace secagg {

// The finest scale (value of one integer unit) at which the sum of
// `num_clients` encodings of values within [-bound, bound] cannot overflow
// int32, keeping a factor 2 of headroom:
//   scale = num_clients * bound / (2^30 - num_clients).
// Fails (InvalidArgument) unless bound is finite and > 0 and
// 1 <= num_clients < 2^20.
StatusOr<double> ChooseFixedPointScale(double bound, uint32_t num_clients);

// OK when n * (bound / scale + 1) < 2^31; otherwise InvalidArgument naming
// the smallest valid scale.
Status CheckFixedPointHeadroom(double scale, double bound,
                               uint32_t num_clients);

// Encodes values[0, count) with unbiased stochastic rounding of
// value / scale: floor(v) + 1 with probability v - floor(v), else floor(v),
// one uniform draw of `rng` per element. Fails (InvalidArgument) on a scale
// that is not finite and > 0, or on a value that is not finite or whose
// |value / scale| exceeds 2^31 - 2 (it would not fit int32), naming its
// index. The caller guarantees the headroom above (values within the bound
// the scale was chosen for).
StatusOr<std::vector<uint32_t>> FixedPointEncode(const float* values,
                                                 size_t count, double scale,
                                                 std::mt19937_64& rng);
inline StatusOr<std::vector<uint32_t>> FixedPointEncode(
    const std::vector<float>& values, double scale, std::mt19937_64& rng) {
  return FixedPointEncode(values.data(), values.size(), scale, rng);
}

// Decodes a (sum of) encoding(s): each word as a two's-complement int32,
// times scale. Exact for sums within the headroom (int32 * scale in double).
std::vector<double> FixedPointDecode(const std::vector<uint32_t>& words,
                                     double scale);

}  // namespace secagg
}  // namespace fedpeft

#endif  // FEDPEFT_SECURITY_SECAGG_FIXED_POINT_H_
