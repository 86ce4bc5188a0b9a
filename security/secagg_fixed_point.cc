#include "security/secagg_fixed_point.h"

#include <cmath>
#include <sstream>
#include <string>

namespace fedpeft {
namespace secagg {
namespace {

constexpr double kTwo30 = 1073741824.0;       // 2^30
constexpr double kTwo31 = 2147483648.0;       // 2^31
constexpr double kMaxMagnitude = kTwo31 - 2;  // |v| whose rounding fits int32
constexpr uint32_t kMaxClientsForScale = 1u << 20;

std::string Num(double v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

}  // namespace

StatusOr<double> ChooseFixedPointScale(double bound, uint32_t num_clients) {
  if (!std::isfinite(bound) || bound <= 0) {
    return Status::InvalidArgument(
        "fixed-point scale: bound must be finite and > 0 (the clip norm, for "
        "DP-clipped updates), got " +
        Num(bound));
  }
  if (num_clients < 1 || num_clients >= kMaxClientsForScale) {
    return Status::InvalidArgument(
        "fixed-point scale: number of clients must be in [1, 2^20), got " +
        std::to_string(num_clients));
  }
  const double n = num_clients;
  return n * bound / (kTwo30 - n);
}

Status CheckFixedPointHeadroom(double scale, double bound,
                               uint32_t num_clients) {
  if (!std::isfinite(scale) || scale <= 0 || !std::isfinite(bound) ||
      bound < 0) {
    return Status::InvalidArgument(
        "fixed-point headroom: scale must be finite and > 0 and bound finite "
        "and >= 0, got scale " +
        Num(scale) + ", bound " + Num(bound));
  }
  const double n = num_clients;
  const double worst = n * (bound / scale + 1);
  if (!(worst < kTwo31)) {
    return Status::InvalidArgument(
        "fixed-point headroom: " + std::to_string(num_clients) +
        " clients * (bound " + Num(bound) + " / scale " + Num(scale) +
        " + 1) = " + Num(worst) +
        " must stay below 2^31 or the sum wraps around; use a scale of at "
        "least " +
        Num(n * bound / (kTwo31 - n)) + " (ChooseFixedPointScale)");
  }
  return Status::Ok();
}

StatusOr<std::vector<uint32_t>> FixedPointEncode(const float* values,
                                                 size_t count, double scale,
                                                 std::mt19937_64& rng) {
  if (!std::isfinite(scale) || scale <= 0) {
    return Status::InvalidArgument(
        "fixed-point encode: scale must be finite and > 0, got " + Num(scale));
  }
  std::vector<uint32_t> words(count);
  for (size_t i = 0; i < count; ++i) {
    const double v = static_cast<double>(values[i]) / scale;
    if (!std::isfinite(v) || std::fabs(v) > kMaxMagnitude) {
      return Status::InvalidArgument(
          "fixed-point encode: element " + std::to_string(i) + " = " +
          Num(values[i]) + " is not finite or beyond int32 at scale " +
          Num(scale) +
          " (|value / scale| must be <= 2^31 - 2; was the "
          "update clipped to the bound the scale was chosen "
          "for?)");
    }
    const double f = std::floor(v);
    // A uniform double in [0, 1) from the top 53 bits of one draw.
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    const int64_t q = static_cast<int64_t>(f) + (u < v - f ? 1 : 0);
    words[i] = static_cast<uint32_t>(q);  // two's complement mod 2^32
  }
  return words;
}

std::vector<double> FixedPointDecode(const std::vector<uint32_t>& words,
                                     double scale) {
  std::vector<double> out(words.size());
  for (size_t i = 0; i < words.size(); ++i) {
    const int64_t w = words[i];
    const int64_t signed_w =
        w >= (int64_t{1} << 31) ? w - (int64_t{1} << 32) : w;
    out[i] = static_cast<double>(signed_w) * scale;
  }
  return out;
}

}  // namespace secagg
}  // namespace fedpeft
