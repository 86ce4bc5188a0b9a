// Tests of CODEC_QUANTIZED: unbiasedness and the variance bound of the
// stochastic rounding, the payload layout and bit packing, every bad encoding
// the decoder must reject, and quantized tensors in a stream.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "proto/fedpeft.pb.h"
#include "proto/tensor_codec.h"
#include "tests/proto/codec_test_util.h"

namespace fedpeft {
namespace transport {
namespace {

using ::testing::HasSubstr;

// ---- quantized codec: helpers ---------------------------------------------

// Packs `levels` LSB-first, `bits` each (tests build payloads by hand).
std::string PackLevels(const std::vector<uint32_t>& levels, int bits) {
  std::string out((levels.size() * bits + 7) / 8, '\0');
  for (size_t i = 0; i < levels.size(); ++i) {
    const size_t bit = i * bits;
    out[bit / 8] = static_cast<char>(static_cast<uint8_t>(out[bit / 8]) |
                                     (levels[i] << (bit % 8)));
  }
  return out;
}

// A CODEC_QUANTIZED tensor built byte by byte: (min, step) per block, then
// the packed levels.
WireTensor QuantizedWire(std::vector<int64_t> shape, int bits,
                         int64_t block_size,
                         const std::vector<std::pair<float, float>>& params,
                         const std::vector<uint32_t>& levels) {
  WireTensor w;
  w.header.set_dtype(proto::DTYPE_F32);
  for (int64_t d : shape) w.header.add_shape(d);
  w.header.set_codec(proto::CODEC_QUANTIZED);
  w.header.set_bits(bits);
  w.header.set_block_size(static_cast<uint32_t>(block_size));
  for (const auto& [min, step] : params) {
    w.payload.append(reinterpret_cast<const char*>(&min), 4);
    w.payload.append(reinterpret_cast<const char*>(&step), 4);
  }
  w.payload += PackLevels(levels, bits);
  w.header.set_encoded_bytes(w.payload.size());
  return w;
}

// Block b's (min, step) from a quantized payload.
std::pair<float, float> BlockParams(const WireTensor& w, int64_t b) {
  float p[2];
  std::memcpy(p, w.payload.data() + 8 * b, 8);
  return {p[0], p[1]};
}

// Level of element i of a quantized payload with `blocks` blocks.
uint32_t LevelAt(const WireTensor& w, int64_t blocks, int64_t i) {
  const int bits = static_cast<int>(w.header.bits());
  const size_t bit = static_cast<size_t>(i) * bits;
  const uint8_t byte = static_cast<uint8_t>(w.payload[8 * blocks + bit / 8]);
  return (byte >> (bit % 8)) & ((1u << bits) - 1);
}

// The stream of one tensor: its header (named or by index) and its payload
// in chunks of `chunk_bytes`.
std::vector<proto::TensorChunk> WireChunks(const WireTensor& w,
                                           const std::string& name,
                                           size_t chunk_bytes = 1 << 20) {
  std::vector<proto::TensorChunk> chunks(1);
  *chunks[0].mutable_header() = w.header;
  chunks[0].mutable_header()->set_name(name);
  for (size_t off = 0; off < w.payload.size(); off += chunk_bytes) {
    chunks.emplace_back();
    chunks.back().mutable_data()->set_data(w.payload.substr(off, chunk_bytes));
  }
  return chunks;
}

Status DecodeStatus(const WireTensor& w) {
  return DecodeTensor(w, "q").status();
}

// ---- quantized codec: statistics ------------------------------------------

// Encodes x `draws` times and checks, per element, that the mean decoded
// value is within 5 standard errors of x (unbiased) and the empirical
// variance within step^2 / 4 (the bound) and near its exact value
// step^2 * p * (1 - p), p the fractional level.
void CheckStatistics(const torch::Tensor& x, int bits, int64_t block_size,
                     int draws) {
  SCOPED_TRACE("bits=" + std::to_string(bits));
  std::mt19937_64 rng(1234 + bits);
  const CodecOptions options{bits, block_size};
  const int64_t n = x.numel();
  torch::Tensor sum = torch::zeros({n}, torch::kDouble);
  torch::Tensor sum_sq = torch::zeros({n}, torch::kDouble);
  WireTensor first;
  for (int k = 0; k < draws; ++k) {
    WireTensor w = MustEncode(x, options, &rng);
    const torch::Tensor d = MustDecode(w).to(torch::kDouble).reshape({n});
    // Each draw lands on one of the two grid points around x.
    sum += d;
    sum_sq += d * d;
    if (k == 0) first = std::move(w);
  }
  const torch::Tensor xd = x.to(torch::kDouble).reshape({n});
  const torch::Tensor mean = sum / draws;
  const torch::Tensor var = (sum_sq - draws * mean * mean) / (draws - 1);
  const auto xa = xd.accessor<double, 1>();
  const auto ma = mean.accessor<double, 1>();
  const auto va = var.accessor<double, 1>();
  const int64_t blocks = (n + block_size - 1) / block_size;
  int bad_mean = 0, bad_var = 0, bad_var_exact = 0;
  double z_sum = 0;
  int z_count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto [min, step] = BlockParams(first, i / block_size);
    ASSERT_LT(i / block_size, blocks);
    const double s = step;
    const double bound = s * s / 4;  // Bernoulli variance p(1-p) s^2 <= s^2/4
    // 5 standard errors of the mean, plus float rounding of the decode.
    const double tol_mean = 5 * std::sqrt(bound / draws) +
                            4e-7 * (std::fabs(xa[i]) + std::fabs(min) + s);
    if (std::fabs(ma[i] - xa[i]) > tol_mean) ++bad_mean;
    // The sample variance of a two-point variable is s^2 p^(1-p^) draws /
    // (draws - 1) <= bound * draws / (draws - 1): 1% covers it.
    if (va[i] > bound * 1.01 + 1e-12) ++bad_var;
    if (s > 0) {
      const double t = (xa[i] - min) / s;
      const double p = t - std::floor(t);
      // The standard error of p^(1-p^) is about |1 - 2p| sqrt(p(1-p)/N).
      const double exact = s * s * p * (1 - p);
      const double tol_var =
          s * s * (5 * std::sqrt(p * (1 - p) / draws) + 3.0 / draws);
      if (std::fabs(va[i] - exact) > tol_var) ++bad_var_exact;
      z_sum += (ma[i] - xa[i]) / std::sqrt(bound / draws);
      ++z_count;
    }
  }
  EXPECT_EQ(bad_mean, 0) << "elements whose mean is off by > 5 std errors";
  EXPECT_EQ(bad_var, 0) << "elements whose variance exceeds step^2/4";
  EXPECT_EQ(bad_var_exact, 0) << "elements whose variance is not p(1-p)s^2";
  // No systematic bias: the mean z-score over all elements (each of
  // variance <= 1, independent) is within 5 / sqrt(count).
  ASSERT_GT(z_count, 0);
  EXPECT_LE(std::fabs(z_sum / z_count), 5.0 / std::sqrt(z_count));
}

TEST(QuantizedCodecTest, UnbiasedWithVarianceWithinBoundForEveryBitWidth) {
  torch::manual_seed(11);
  // 1000 elements in blocks of 64 (the last one 40 long), spread over
  // different ranges per block.
  const torch::Tensor x =
      torch::randn({10, 100}) * torch::linspace(0.01, 3, 10).unsqueeze(1);
  for (int bits : {8, 4, 2}) CheckStatistics(x, bits, 64, 2000);
}

TEST(QuantizedCodecTest, VarianceReachesItsBoundHalfwayBetweenLevels) {
  // min 0, max 15: step 1 at 4 bits; every other value is halfway between
  // two levels, where the variance is exactly step^2 / 4.
  std::vector<float> v = {0.0f, 15.0f};
  for (int q = 0; q < 15; ++q) v.push_back(q + 0.5f);
  const torch::Tensor x = torch::tensor(v);
  std::mt19937_64 rng(5);
  const int draws = 4000;
  torch::Tensor sum = torch::zeros({x.numel()}, torch::kDouble);
  torch::Tensor sum_sq = torch::zeros({x.numel()}, torch::kDouble);
  for (int k = 0; k < draws; ++k) {
    const torch::Tensor d =
        MustDecode(MustEncode(x, {4, 256}, &rng)).to(torch::kDouble);
    sum += d;
    sum_sq += d * d;
  }
  const torch::Tensor mean = sum / draws;
  const torch::Tensor var = (sum_sq - draws * mean * mean) / (draws - 1);
  for (int64_t i = 2; i < x.numel(); ++i) {
    EXPECT_LE(var[i].item<double>(), 0.25 * draws / (draws - 1) + 1e-12);
    EXPECT_GE(var[i].item<double>(), 0.24);  // p^ within 0.45..0.55
    EXPECT_NEAR(mean[i].item<double>(), v[i], 5 * std::sqrt(0.25 / draws));
  }
  EXPECT_EQ(var[0].item<double>(), 0.0);  // the endpoints are exact
  EXPECT_EQ(var[1].item<double>(), 0.0);
}

TEST(QuantizedCodecTest, EveryElementWithinOneStep) {
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({7, 301}) * 5;
  std::mt19937_64 rng(9);
  for (int bits : {8, 4, 2}) {
    for (int64_t block : {int64_t{1}, int64_t{13}, int64_t{256}}) {
      WireTensor w = MustEncode(x, {bits, block}, &rng);
      const torch::Tensor d = MustDecode(w).reshape({-1});
      const torch::Tensor flat = x.reshape({-1});
      for (int64_t i = 0; i < flat.numel(); i += 17) {
        const float step = BlockParams(w, i / block).second;
        EXPECT_LE(std::fabs(d[i].item<float>() - flat[i].item<float>()),
                  step * 1.0001f + 1e-6f)
            << "bits " << bits << " block " << block << " element " << i;
      }
    }
  }
}

// ---- quantized codec: layout and bit packing ------------------------------

TEST(QuantizedCodecTest, PayloadLayoutIsAsDocumented) {
  // 2 bits: levels 0 1 2 3 1 -> 0b11100100 = 0xe4, then 0b01 with zero
  // padding. One block: min 0, step 1.
  std::mt19937_64 rng(1);
  WireTensor w =
      MustEncode(torch::tensor({0.f, 1.f, 2.f, 3.f, 1.f}), {2, 256}, &rng);
  EXPECT_EQ(w.header.codec(), proto::CODEC_QUANTIZED);
  EXPECT_EQ(w.header.dtype(), proto::DTYPE_F32);
  EXPECT_EQ(w.header.bits(), 2u);
  EXPECT_EQ(w.header.block_size(), 256u);
  EXPECT_TRUE(w.header.name().empty());
  EXPECT_EQ(w.header.index(), 0u);
  EXPECT_EQ(w.header.encoded_bytes(), 10u);
  EXPECT_EQ(w.payload, std::string("\x00\x00\x00\x00"  // min 0.0f
                                   "\x00\x00\x80\x3f"  // step 1.0f
                                   "\xe4\x01",
                                   10));
  // 4 bits, blocks of 2: block 0 = {0, 15}: min 0, step 1, levels 0 and 15
  // (0xf0); block 1 = {2}: min 2, step 0, level 0 (0x00).
  w = MustEncode(torch::tensor({0.f, 15.f, 2.f}), {4, 2}, &rng);
  EXPECT_EQ(w.payload, std::string("\x00\x00\x00\x00\x00\x00\x80\x3f"
                                   "\x00\x00\x00\x40\x00\x00\x00\x00"
                                   "\xf0\x00",
                                   18));
}

TEST(QuantizedCodecTest, GridValuesRoundTripExactlyForEveryBitWidth) {
  std::mt19937_64 rng(77);
  std::mt19937 pick(3);
  for (int bits : {2, 4, 8}) {
    const uint32_t max_level = (1u << bits) - 1;
    for (int64_t numel :
         {int64_t{1}, int64_t{37}, int64_t{101}, int64_t{1001}}) {
      for (int64_t block :
           {int64_t{1}, int64_t{3}, int64_t{7}, int64_t{64}, int64_t{1000}}) {
        SCOPED_TRACE("bits=" + std::to_string(bits) + " numel=" +
                     std::to_string(numel) + " block=" + std::to_string(block));
        // Per block: min -1.5 - b, step 0.25 (exact binary fractions), levels
        // random with 0 and max_level present so min and max are the ends.
        std::vector<float> values(numel);
        std::vector<uint32_t> levels(numel);
        for (int64_t i = 0; i < numel; ++i) {
          const int64_t b = i / block;
          const int64_t start = b * block;
          const int64_t end = std::min(numel, start + block);
          uint32_t q = pick() % (max_level + 1);
          if (i == start) q = 0;
          if (i == end - 1 && end - start > 1) q = max_level;
          levels[i] = q;
          values[i] = -1.5f - static_cast<float>(b) + 0.25f * q;
        }
        const torch::Tensor x = torch::tensor(values);
        WireTensor w = MustEncode(x, {bits, block}, &rng);
        const int64_t blocks = (numel + block - 1) / block;
        ASSERT_EQ(w.payload.size(),
                  static_cast<size_t>(8 * blocks + (numel * bits + 7) / 8));
        EXPECT_EQ(w.payload.size(), EncodedPayloadBytes(numel, {bits, block}));
        for (int64_t i = 0; i < numel; ++i) {
          const bool single =
              std::min(numel, (i / block + 1) * block) - (i / block) * block ==
              1;
          // A block of one element has step 0 and level 0.
          ASSERT_EQ(LevelAt(w, blocks, i), single ? 0u : levels[i]) << i;
        }
        EXPECT_TRUE(torch::equal(MustDecode(w), x));
      }
    }
  }
}

TEST(QuantizedCodecTest, RawBitWidthsRoundTrip) {
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({3, 41});
  std::mt19937_64 rng(1);
  WireTensor w = MustEncode(x, {32, 256}, nullptr);
  EXPECT_EQ(w.header.codec(), proto::CODEC_RAW);
  EXPECT_EQ(w.header.dtype(), proto::DTYPE_F32);
  EXPECT_EQ(w.header.bits(), 0u);
  EXPECT_EQ(w.payload.size(), EncodedPayloadBytes(x.numel(), {32, 256}));
  EXPECT_TRUE(torch::equal(MustDecode(w), x));
  // F16 values survive 16 bits exactly; the result is F16.
  const torch::Tensor h = x.to(torch::kHalf);
  w = MustEncode(h.to(torch::kFloat32), {16, 256}, nullptr);
  EXPECT_EQ(w.header.dtype(), proto::DTYPE_F16);
  EXPECT_EQ(w.payload.size(), EncodedPayloadBytes(x.numel(), {16, 256}));
  EXPECT_TRUE(torch::equal(MustDecode(w), h));
  // F16 and BF16 inputs become F32 at 32 bits, losslessly.
  w = MustEncode(x.to(torch::kBFloat16), {32, 256}, &rng);
  EXPECT_TRUE(
      torch::equal(MustDecode(w), x.to(torch::kBFloat16).to(torch::kFloat)));
}

TEST(QuantizedCodecTest, ConstantAndEmptyTensors) {
  std::mt19937_64 rng(1);
  for (int bits : {2, 4, 8}) {
    const torch::Tensor c = torch::full({5, 7}, -3.25f);
    WireTensor w = MustEncode(c, {bits, 16}, &rng);
    for (int64_t b = 0; b < 3; ++b) {
      EXPECT_EQ(BlockParams(w, b), std::make_pair(-3.25f, 0.0f));
    }
    EXPECT_TRUE(torch::equal(MustDecode(w), c));

    const torch::Tensor e = torch::zeros({0, 8});
    w = MustEncode(e, {bits, 16}, &rng);
    EXPECT_EQ(w.header.encoded_bytes(), 0u);
    EXPECT_TRUE(w.payload.empty());
    const torch::Tensor d = MustDecode(w);
    EXPECT_EQ(d.sizes(), e.sizes());
    EXPECT_EQ(d.scalar_type(), torch::kFloat32);
  }
}

TEST(QuantizedCodecTest, EncodedPayloadBytesMatchesPayload) {
  std::mt19937_64 rng(2);
  for (int bits : {32, 16, 8, 4, 2}) {
    for (int64_t numel : {0, 1, 2, 3, 5, 9, 255, 256, 257, 1000}) {
      for (int64_t block : {1, 3, 64, 256}) {
        WireTensor w = MustEncode(torch::randn({numel}), {bits, block}, &rng);
        EXPECT_EQ(w.payload.size(), EncodedPayloadBytes(numel, {bits, block}))
            << bits << " " << numel << " " << block;
        EXPECT_EQ(w.header.encoded_bytes(), w.payload.size());
      }
    }
  }
  EXPECT_EQ(EncodedPayloadBytes(1000, {4, 256}), 8u * 4 + 500);
  EXPECT_EQ(EncodedPayloadBytes(3, {2, 2}), 8u * 2 + 1);
  EXPECT_EQ(EncodedPayloadBytes(10, {3, 2}), 0u);  // invalid options
  EXPECT_EQ(EncodedPayloadBytes(10, {4, 0}), 0u);
}

TEST(QuantizedCodecTest, ValidateCodecOptions) {
  EXPECT_TRUE(ValidateCodecOptions({4, 256}, "compression").ok());
  EXPECT_TRUE(ValidateCodecOptions({32, kMaxBlockSize}, "c").ok());
  Status s = ValidateCodecOptions({3, 256}, "compression");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("compression.bits: must be one of 32, "
                                     "16, 8, 4, 2, got 3"));
  s = ValidateCodecOptions({0, 0}, "compression");
  EXPECT_THAT(s.message(), HasSubstr("got 0; compression.block_size: must "
                                     "be in [1, 1048576], got 0"));
  s = ValidateCodecOptions({4, kMaxBlockSize + 1}, "x");
  EXPECT_THAT(s.message(), HasSubstr("x.block_size"));
}

TEST(QuantizedCodecTest, EncodeRejectsNonFiniteAndBadInput) {
  std::mt19937_64 rng(1);
  for (int bits : {32, 16, 8, 4, 2}) {
    torch::Tensor t = torch::ones({10});
    t[3] = std::numeric_limits<float>::quiet_NaN();
    Status s = EncodeTensor(t, {bits, 4}, &rng).status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("element 3 is nan"));
    t[3] = -std::numeric_limits<float>::infinity();
    s = EncodeTensor(t, {bits, 4}, &rng).status();
    EXPECT_THAT(s.message(), HasSubstr("element 3 is -inf"));
  }
  Status s = EncodeTensor(torch::tensor({1e5f}), {16, 4}, &rng).status();
  EXPECT_THAT(s.message(), HasSubstr("beyond the F16 range"));
  s = EncodeTensor(torch::ones({2}), {4, 4}, nullptr).status();
  EXPECT_THAT(s.message(), HasSubstr("needs a random generator"));
  s = EncodeTensor(torch::ones({2}, torch::kInt), {4, 4}, &rng).status();
  EXPECT_THAT(s.message(), HasSubstr("dtype Int cannot be encoded"));
  s = EncodeTensor(torch::ones({2}), {5, 4}, &rng).status();
  EXPECT_THAT(s.message(), HasSubstr("compression.bits"));
  // A range F32 cannot span with min + 255 x step.
  s = EncodeTensor(torch::tensor({-3e38f, 3e38f}), {8, 4}, &rng).status();
  EXPECT_THAT(s.message(), HasSubstr("block 0 spans"));

  // Through EncodeTensors: named, and nothing written.
  torch::Tensor bad = torch::zeros({4});
  bad[2] = std::numeric_limits<float>::infinity();
  auto never = [](const proto::TensorChunk&) -> bool {
    ADD_FAILURE() << "nothing may be written for an invalid map";
    return false;
  };
  s = EncodeTensors({{"a", torch::zeros({3})}, {"w", bad}}, 8, never, {4, 2},
                    &rng);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'w': element 2 is inf"));
  s = EncodeTensors({{"a", torch::zeros({3})}}, 8, never, {4, 2}, nullptr);
  EXPECT_THAT(s.message(), HasSubstr("needs a random generator"));
  s = EncodeTensors({{"a", torch::zeros({3})}}, 8, never, {4, 0}, &rng);
  EXPECT_THAT(s.message(), HasSubstr("compression.block_size"));
}

// ---- quantized codec: bad encodings ---------------------------------------

TEST(QuantizedDecodeTest, AcceptsHandBuiltPayload) {
  WireTensor w =
      QuantizedWire({5}, 2, 3, {{1.0f, 0.5f}, {-2.0f, 0.0f}}, {0, 3, 2, 1, 3});
  StatusOr<torch::Tensor> t = DecodeTensor(w, "q");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE(
      torch::equal(*t, torch::tensor({1.0f, 2.5f, 2.0f, -2.0f, -2.0f})));
}

TEST(QuantizedDecodeTest, RejectsWrongPayloadLength) {
  WireTensor w =
      QuantizedWire({5}, 2, 3, {{1.0f, 0.5f}, {-2.0f, 0.0f}}, {0, 3, 2, 1, 3});
  w.header.set_encoded_bytes(19);
  Status s = DecodeStatus(w);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              HasSubstr("tensor 'q': encoded_bytes 19 but shape [5] quantized "
                        "to 2 bits in blocks of 3 takes 18 bytes"));
  w.header.set_encoded_bytes(18);
  w.payload.pop_back();
  s = DecodeStatus(w);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'q': payload of 17 bytes, "
                                     "expected its encoded_bytes 18"));
  // A shape whose quantized size overflows uint64.
  w.header.clear_shape();
  w.header.add_shape(int64_t{1} << 62);
  w.header.add_shape(1);
  w.header.set_block_size(1);
  s = DecodeStatus(w);
  EXPECT_THAT(s.message(), HasSubstr("takes more than 2^64 bytes quantized"));
}

TEST(QuantizedDecodeTest, RejectsBadBlockParameters) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    float min, step;
    std::string want;
  };
  const std::vector<Case> cases = {
      {nan, 1.0f, "block 1 of 2 has min nan (expected a finite F32)"},
      {-inf, 1.0f, "block 1 of 2 has min -inf"},
      {0.0f, nan, "block 1 of 2 has step nan (expected a finite F32 >= 0)"},
      {0.0f, -1.0f, "block 1 of 2 has step -1 (expected a finite F32 >= 0)"},
      {0.0f, inf, "block 1 of 2 has step inf"},
      {3e38f, 1e37f,
       "block 1 of 2 has min 3.00000001e+38 + 255 x step 9.99999993e+36 "
       "overflowing F32 (expected every level to decode to a finite value)"},
      // 255 x step alone overflows.
      {-3e38f, 3e36f,
       "block 1 of 2 has min -3.00000001e+38 + 255 x step 3.00000004e+36 "
       "overflowing F32"},
  };
  for (const Case& c : cases) {
    WireTensor w =
        QuantizedWire({4}, 8, 2, {{0.0f, 1.0f}, {c.min, c.step}}, {1, 2, 3, 4});
    Status s = DecodeStatus(w);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("tensor 'q': " + c.want));
  }
  // At the edge: min + 255 x step just finite is fine.
  WireTensor w = QuantizedWire({2}, 8, 2, {{-3e38f, 1.3e36f}}, {0, 255});
  EXPECT_TRUE(DecodeStatus(w).ok()) << DecodeStatus(w).ToString();
}

TEST(QuantizedDecodeTest, RejectsBadBitsAndBlockSize) {
  WireTensor good = QuantizedWire({4}, 4, 4, {{0.0f, 1.0f}}, {1, 2, 3, 4});
  for (uint32_t bits : {0u, 1u, 3u, 16u, 32u}) {
    WireTensor w = good;
    w.header.set_bits(bits);
    EXPECT_THAT(DecodeStatus(w).message(),
                HasSubstr("tensor 'q': bits " + std::to_string(bits) +
                          " with CODEC_QUANTIZED (expected 2, 4 or 8)"));
  }
  WireTensor w = good;
  w.header.set_block_size(0);
  EXPECT_THAT(DecodeStatus(w).message(),
              HasSubstr("tensor 'q': block_size 0 with CODEC_QUANTIZED "
                        "(expected 1 to 1048576)"));
  w.header.set_block_size(kMaxBlockSize + 1);
  EXPECT_THAT(DecodeStatus(w).message(), HasSubstr("block_size 1048577"));
  // bits / block_size on a raw tensor.
  WireTensor raw;
  raw.header.set_dtype(proto::DTYPE_F32);
  raw.header.add_shape(2);
  raw.header.set_encoded_bytes(8);
  raw.payload.assign(8, '\0');
  ASSERT_TRUE(DecodeStatus(raw).ok());
  raw.header.set_bits(8);
  EXPECT_THAT(DecodeStatus(raw).message(),
              HasSubstr("tensor 'q': bits 8 and block_size 0 with CODEC_RAW "
                        "(expected 0 and 0"));
  raw.header.set_bits(0);
  raw.header.set_block_size(64);
  EXPECT_THAT(DecodeStatus(raw).message(), HasSubstr("block_size 64 with "
                                                     "CODEC_RAW"));
  raw.header.set_block_size(0);
  raw.header.set_codec(static_cast<proto::TensorCodec>(3));
  EXPECT_THAT(DecodeStatus(raw).message(),
              HasSubstr("tensor 'q': codec 3 (expected CODEC_RAW=0, "
                        "CODEC_QUANTIZED=1 or CODEC_MASKED=2"));
}

TEST(QuantizedDecodeTest, RejectsNonzeroPaddingBits) {
  // 3 elements of 2 bits: 6 bits used, bits 6 and 7 of the byte are padding.
  WireTensor w = QuantizedWire({3}, 2, 8, {{0.0f, 1.0f}}, {1, 2, 3});
  ASSERT_TRUE(DecodeStatus(w).ok());
  w.payload.back() = static_cast<char>(w.payload.back() | 0x40);
  Status s = DecodeStatus(w);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'q': last byte 0x79 has nonzero "
                                     "padding bits above bit 6"));
  // 4 bits, odd count: the high nibble of the last byte.
  w = QuantizedWire({1}, 4, 8, {{0.0f, 1.0f}}, {5});
  w.payload.back() = static_cast<char>(0x15);
  EXPECT_THAT(DecodeStatus(w).message(), HasSubstr("above bit 4"));
  // Through a TensorDecoder: rejected when the last byte arrives.
  Status d = Feed(WireChunks(w, "p", 4));
  EXPECT_THAT(d.message(), HasSubstr("tensor 'p': last byte 0x15"));
}

TEST(QuantizedDecodeTest, QuantizedDecodesToF32WhateverItsDtype) {
  WireTensor w = QuantizedWire({2}, 8, 2, {{0.0f, 0.5f}}, {1, 3});
  w.header.set_dtype(proto::DTYPE_BF16);
  StatusOr<torch::Tensor> t = DecodeTensor(w, "q");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(*t, torch::tensor({0.5f, 1.5f})));
  w.header.set_dtype(proto::DTYPE_UNSPECIFIED);
  EXPECT_THAT(DecodeStatus(w).message(), HasSubstr("dtype 0"));
}

TEST(QuantizedStreamTest, LimitsApplyToEncodedBytes) {
  // 1000 elements at 4 bits in blocks of 100: 80 + 500 bytes.
  std::mt19937_64 rng(1);
  WireTensor w = MustEncode(torch::randn({1000}), {4, 100}, &rng);
  ASSERT_EQ(w.payload.size(), 580u);
  DecoderLimits limits;
  limits.max_total_bytes = 579;
  EXPECT_THAT(Feed(WireChunks(w, "w"), limits).message(),
              HasSubstr("tensor 'w': 580 bytes would bring the stream to 580 "
                        "bytes, more than max_total_bytes 579"));
  limits.max_total_bytes = 580;
  EXPECT_TRUE(Feed(WireChunks(w, "w", 13), limits).ok());
  // Incomplete quantized tensor.
  std::vector<proto::TensorChunk> chunks = WireChunks(w, "w", 100);
  chunks.pop_back();
  EXPECT_THAT(Feed(chunks).message(),
              HasSubstr("tensor 'w': stream ended after 500 of its 580 "
                        "bytes"));
}

TEST(QuantizedStreamTest, WriteTensorsChecksWhatItSends) {
  std::mt19937_64 rng(1);
  WireTensors wires;
  wires["a"] = MustEncode(torch::randn({10}), {2, 4}, &rng);
  wires["b"] = MustEncode(torch::randn({3}), {16, 4}, &rng);
  std::vector<proto::TensorChunk> chunks;
  auto collect = [&chunks](const proto::TensorChunk& c) {
    chunks.push_back(c);
    return true;
  };
  ASSERT_TRUE(WriteTensors(wires, 5, nullptr, collect).ok());
  StatusOr<TensorMap> got = DecodeAll(chunks);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(torch::equal(got->at("a"), MustDecode(wires["a"])));
  EXPECT_TRUE(torch::equal(got->at("b"), MustDecode(wires["b"])));

  chunks.clear();
  wires["a"].payload.pop_back();
  Status s = WriteTensors(wires, 5, nullptr, collect);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': payload of"));
  EXPECT_TRUE(chunks.empty());
  s = WriteTensors(wires, 0, nullptr, collect);
  EXPECT_THAT(s.message(), HasSubstr("chunk_bytes: must be >= 1"));
}
}  // namespace
}  // namespace transport
}  // namespace fedpeft
