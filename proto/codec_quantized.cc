// CODEC_QUANTIZED: stochastic, unbiased b-bit quantization (b = 2, 4, 8) of
// F32 values in min-max blocks, the LSB-first bit packing of the levels, the
// validation of a received payload (CheckQuantized) and its dequantization.
// The templates for each bit width stay in this file; the rest of the codec
// reaches them through QuantizePayload and DequantizePayload.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "proto/codec_internal.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace transport {
namespace internal {

bool ValidBits(int64_t bits) { return bits == 2 || bits == 4 || bits == 8; }

std::optional<uint64_t> QuantizedBytes(int64_t numel, int bits,
                                       int64_t block_size) {
  const uint64_t n = static_cast<uint64_t>(numel);
  const uint64_t b = static_cast<uint64_t>(block_size);
  const uint64_t blocks = n / b + (n % b != 0);
  uint64_t params = 0;
  if (__builtin_mul_overflow(blocks, kBlockParamBytes, &params)) {
    return std::nullopt;
  }
  // ceil(n * bits / 8) without forming n * bits: n / 8 * bits <= n.
  const uint64_t levels = n / 8 * bits + ((n % 8) * bits + 7) / 8;
  uint64_t total = 0;
  if (__builtin_add_overflow(params, levels, &total)) return std::nullopt;
  return total;
}

int64_t FirstNonFinite(const float* x, int64_t n) {
  constexpr int64_t kStride = 4096;
  for (int64_t start = 0; start < n; start += kStride) {
    const int64_t end = std::min(n, start + kStride);
    bool bad = false;
    for (int64_t i = start; i < end; ++i) {  // branch-free: vectorizes
      bad |= !(std::fabs(x[i]) <= std::numeric_limits<float>::max());
    }
    if (bad) {
      for (int64_t i = start; i < end; ++i) {
        if (!std::isfinite(x[i])) return i;
      }
    }
  }
  return n;
}

namespace {

// The decoded value of level q: exactly what every decoder computes.
inline float Dequant(float min, float step, uint32_t q) {
  return min + static_cast<float>(q) * step;
}

struct BlockRange {
  float lo;
  float hi;
  bool nan;  // a NaN among the elements (lo and hi skip NaNs)
};

// Min and max of x[0, n), n >= 1, in four independent lanes so the
// comparisons pipeline.
BlockRange RangeOf(const float* x, int64_t n) {
  float lo[4] = {x[0], x[0], x[0], x[0]};
  float hi[4] = {x[0], x[0], x[0], x[0]};
  bool nan[4] = {false, false, false, false};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const float v = x[i + k];
      lo[k] = v < lo[k] ? v : lo[k];
      hi[k] = v > hi[k] ? v : hi[k];
      nan[k] |= v != v;
    }
  }
  for (; i < n; ++i) {
    lo[0] = x[i] < lo[0] ? x[i] : lo[0];
    hi[0] = x[i] > hi[0] ? x[i] : hi[0];
    nan[0] |= x[i] != x[i];
  }
  BlockRange r{lo[0], hi[0], nan[0]};
  for (int k = 1; k < 4; ++k) {
    r.lo = lo[k] < r.lo ? lo[k] : r.lo;
    r.hi = hi[k] > r.hi ? hi[k] : r.hi;
    r.nan |= nan[k];
  }
  // x[0] seeds every lane: a NaN there is in lo and hi, not in the flags.
  r.nan |= x[0] != x[0];
  return r;
}

// Packs kBits-wide levels LSB-first, eight bytes at a time.
template <int kBits>
class BitWriter {
 public:
  explicit BitWriter(uint8_t* out) : out_(out) {}
  void Put(uint32_t q) {
    acc_ |= static_cast<uint64_t>(q) << used_;
    used_ += kBits;
    if (used_ == 64) {
      std::memcpy(out_, &acc_, 8);
      out_ += 8;
      acc_ = 0;
      used_ = 0;
    }
  }
  // Writes the last partial word's bytes (padding bits stay zero).
  void Flush() {
    const int bytes = (used_ + 7) / 8;
    std::memcpy(out_, &acc_, static_cast<size_t>(bytes));
  }

 private:
  uint8_t* out_;
  uint64_t acc_ = 0;
  int used_ = 0;
};

// Quantizes x[0, numel) into `params` (min, step per block) and `levels`
// (packed LSB-first, ceil(numel * kBits / 8) bytes). Level q = floor(t) +
// Bernoulli(t - floor(t)) with t = (x - min) / step computed in double as
// the fixed-point t * 2^32, whose low 32 bits (the fraction) are compared
// with a uniform 32-bit draw: E[q] = t to 2^-32, so the decoded value is
// unbiased up to float rounding. Two draws come from each 64-bit output of
// `rng`. Fails on NaN or Inf (naming the element) or a block whose range
// overflows F32.
template <int kBits>
Status QuantizeBlocks(const float* x, int64_t numel, int64_t block_size,
                      std::mt19937_64* rng, char* params, uint8_t* levels) {
  constexpr uint32_t kMaxLevel = (1u << kBits) - 1;
  BitWriter<kBits> writer(levels);
  std::vector<uint64_t> draws(static_cast<size_t>(block_size + 1) / 2);
  for (int64_t start = 0, block = 0; start < numel;
       start += block_size, ++block) {
    const int64_t end = std::min(numel, start + block_size);
    const BlockRange range_of_block = RangeOf(x + start, end - start);
    const float lo = range_of_block.lo;
    const float hi = range_of_block.hi;
    if (range_of_block.nan || !std::isfinite(lo) || !std::isfinite(hi)) {
      const int64_t bad = start + FirstNonFinite(x + start, end - start);
      return Status::InvalidArgument(
          "element " + std::to_string(bad) + " is " + FloatString(x[bad]) +
          " (as F32; expected finite values: did training diverge?)");
    }
    float step = 0.0f;
    if (hi > lo) {
      const double range = static_cast<double>(hi) - static_cast<double>(lo);
      step = static_cast<float>(range / kMaxLevel);
      // Round the step up so that t <= kMaxLevel for every element: the
      // clamp below then only absorbs double rounding.
      if (static_cast<double>(step) * kMaxLevel < range) {
        step = std::nextafter(step, std::numeric_limits<float>::infinity());
      }
      if (!std::isfinite(Dequant(lo, step, kMaxLevel))) {
        return Status::InvalidArgument(
            "block " + std::to_string(block) + " spans [" + FloatString(lo) +
            ", " + FloatString(hi) +
            "], beyond what F32 min + level x step can hold (send it with "
            "bits 32)");
      }
    }
    const float block_params[2] = {lo, step};
    std::memcpy(params + block * kBlockParamBytes, block_params,
                kBlockParamBytes);
    if (step == 0.0f) {  // every element is lo: level 0
      for (int64_t i = start; i < end; ++i) writer.Put(0);
      continue;
    }
    const int64_t n = end - start;
    for (int64_t k = 0; k < (n + 1) / 2; ++k) draws[k] = (*rng)();
    const double scale = 0x1p32 / static_cast<double>(step);
    const double base = lo;
    for (int64_t j = 0; j < n; ++j) {
      // t * 2^32 <= (kMaxLevel + tiny) * 2^32 < 2^41: exact in int64.
      const uint64_t fixed = static_cast<uint64_t>(static_cast<int64_t>(
          (static_cast<double>(x[start + j]) - base) * scale));
      const uint32_t u = static_cast<uint32_t>(draws[j >> 1] >> (32 * (j & 1)));
      const uint32_t q = static_cast<uint32_t>(fixed >> 32) +
                         (u < static_cast<uint32_t>(fixed) ? 1u : 0u);
      writer.Put(std::min(q, kMaxLevel));
    }
  }
  writer.Flush();
  return Status::Ok();
}

// Decodes a payload CheckQuantized accepted into out[0, numel).
template <int kBits>
void DequantizeBlocks(const char* payload, const Layout& layout, float* out) {
  constexpr uint32_t kMask = (1u << kBits) - 1;
  const int64_t blocks =
      (layout.numel + layout.block_size - 1) / layout.block_size;
  const uint8_t* levels =
      reinterpret_cast<const uint8_t*>(payload) + blocks * kBlockParamBytes;
  for (int64_t b = 0; b < blocks; ++b) {
    float min, step;
    std::memcpy(&min, payload + b * kBlockParamBytes, sizeof(float));
    std::memcpy(&step, payload + b * kBlockParamBytes + 4, sizeof(float));
    const int64_t start = b * layout.block_size;
    const int64_t end = std::min(layout.numel, start + layout.block_size);
    for (int64_t i = start; i < end; ++i) {
      const uint64_t bit = static_cast<uint64_t>(i) * kBits;
      const uint32_t q = (levels[bit >> 3] >> (bit & 7)) & kMask;
      out[i] = Dequant(min, step, q);
    }
  }
}

}  // namespace

Status QuantizePayload(const float* x, int64_t numel,
                       const CodecOptions& options, std::mt19937_64* rng,
                       char* payload) {
  char* params = payload;
  const int64_t blocks = (numel + options.block_size - 1) / options.block_size;
  uint8_t* levels =
      reinterpret_cast<uint8_t*>(params + blocks * kBlockParamBytes);
  Status s;
  switch (options.bits) {
    case 2:
      s = QuantizeBlocks<2>(x, numel, options.block_size, rng, params, levels);
      break;
    case 4:
      s = QuantizeBlocks<4>(x, numel, options.block_size, rng, params, levels);
      break;
    default:
      s = QuantizeBlocks<8>(x, numel, options.block_size, rng, params, levels);
      break;
  }
  return s;
}

Status CheckQuantized(const char* payload, const Layout& layout,
                      const std::string& subject) {
  const uint32_t max_level = (1u << layout.bits) - 1;
  const int64_t blocks =
      (layout.numel + layout.block_size - 1) / layout.block_size;
  for (int64_t b = 0; b < blocks; ++b) {
    float min, step;
    std::memcpy(&min, payload + b * kBlockParamBytes, sizeof(float));
    std::memcpy(&step, payload + b * kBlockParamBytes + 4, sizeof(float));
    const std::string block = subject + ": block " + std::to_string(b) +
                              " of " + std::to_string(blocks);
    if (!std::isfinite(min)) {
      return Status::InvalidArgument(block + " has min " + FloatString(min) +
                                     " (expected a finite F32)");
    }
    if (!std::isfinite(step) || !(step >= 0.0f)) {
      return Status::InvalidArgument(block + " has step " + FloatString(step) +
                                     " (expected a finite F32 >= 0)");
    }
    if (!std::isfinite(Dequant(min, step, max_level))) {
      return Status::InvalidArgument(
          block + " has min " + FloatString(min) + " + " +
          std::to_string(max_level) + " x step " + FloatString(step) +
          " overflowing F32 (expected every level to decode to a finite "
          "value)");
    }
  }
  const uint64_t level_bits = static_cast<uint64_t>(layout.numel) * layout.bits;
  if (level_bits % 8 != 0) {
    const uint8_t last = static_cast<uint8_t>(payload[layout.bytes - 1]);
    const uint8_t padding = static_cast<uint8_t>(last >> (level_bits % 8));
    if (padding != 0) {
      return Status::InvalidArgument(
          subject + ": last byte 0x" +
          [](unsigned v) {
            const char* hex = "0123456789abcdef";
            return std::string{hex[v >> 4], hex[v & 15]};
          }(last) +
          " has nonzero padding bits above bit " +
          std::to_string(level_bits % 8) + " (expected zero padding)");
    }
  }
  return Status::Ok();
}

void DequantizePayload(const char* payload, const Layout& layout, float* out) {
  switch (layout.bits) {
    case 2:
      DequantizeBlocks<2>(payload, layout, out);
      break;
    case 4:
      DequantizeBlocks<4>(payload, layout, out);
      break;
    default:
      DequantizeBlocks<8>(payload, layout, out);
      break;
  }
}

}  // namespace internal
}  // namespace transport
}  // namespace fedpeft
