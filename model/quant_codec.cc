#include "model/quant_codec.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "model/frozen_weight.h"

namespace fedpeft {
namespace model {
namespace quant {
namespace {

constexpr int64_t kBlock = kNf4BlockSize;

torch::Tensor LevelsTensor(torch::Device device) {
  static const torch::Tensor kCpu =
      torch::tensor(std::vector<float>(Nf4Levels().begin(), Nf4Levels().end()));
  return device.is_cpu() ? kCpu : kCpu.to(device);
}

// Midpoints between adjacent levels, in float32 as the tensor path
// computes them: rounding to the nearest level is counting the midpoints
// below a value (ties to the lower level).
const std::array<float, 15>& Midpoints() {
  static const std::array<float, 15> kMid = [] {
    std::array<float, 15> m{};
    const auto& l = Nf4Levels();
    for (int i = 0; i < 15; ++i) m[i] = (l[i] + l[i + 1]) / 2.0f;
    return m;
  }();
  return kMid;
}

// The number of midpoints below y (0..15): a branchless binary search over
// the 15 sorted midpoints. NaN counts none.
inline uint8_t Nf4Code(float y, const float* mid) {
  int c = 0;
  c += (mid[c + 7] < y) ? 8 : 0;
  c += (mid[c + 3] < y) ? 4 : 0;
  c += (mid[c + 1] < y) ? 2 : 0;
  c += (mid[c] < y) ? 1 : 0;
  return static_cast<uint8_t>(c);
}

// Elements per parallel task: enough to amortize the task.
constexpr int64_t kGrainElements = int64_t{1} << 16;

void CheckFloat(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, what,
              " must be float32, got ", t.scalar_type());
}

}  // namespace

torch::Tensor ZeroPadTo(const torch::Tensor& flat, int64_t multiple) {
  const int64_t n = flat.numel();
  const int64_t padded = (n + multiple - 1) / multiple * multiple;
  if (padded == n) return flat;
  return torch::cat({flat, torch::zeros({padded - n}, flat.options())});
}

namespace ops {

std::pair<torch::Tensor, torch::Tensor> Nf4Encode(const torch::Tensor& values) {
  CheckFloat(values, "Nf4Encode: values");
  torch::Tensor blocks =
      ZeroPadTo(values.reshape({-1}), kBlock).view({-1, kBlock});
  torch::Tensor absmax = blocks.abs().amax(1);
  torch::Tensor safe =
      torch::where(absmax > 0, absmax, torch::ones_like(absmax));
  torch::Tensor levels = LevelsTensor(values.device());
  torch::Tensor mid = (levels.narrow(0, 0, 15) + levels.narrow(0, 1, 15)) / 2;
  torch::Tensor codes = torch::bucketize(blocks / safe.unsqueeze(1), mid)
                            .to(torch::kUInt8)
                            .view({-1, 2});
  torch::Tensor packed =
      codes.select(1, 0)
          .bitwise_or(codes.select(1, 1).bitwise_left_shift(4))
          .contiguous();
  return {packed, absmax.contiguous()};
}

torch::Tensor Nf4Decode(const torch::Tensor& packed,
                        const torch::Tensor& absmax) {
  const int64_t nblocks = absmax.numel();
  TORCH_CHECK(packed.numel() == nblocks * kBlock / 2,
              "Nf4Decode: ", packed.numel(), " code bytes for ", nblocks,
              " blocks");
  torch::Tensor idx =
      torch::stack({packed.bitwise_and(15), packed.bitwise_right_shift(4)}, 1)
          .reshape({-1})
          .to(torch::kInt64);
  return LevelsTensor(packed.device())
      .index_select(0, idx)
      .view({nblocks, kBlock})
      .mul_(absmax.unsqueeze(1))
      .view({-1});
}

std::pair<torch::Tensor, torch::Tensor> Int8EncodeRows(
    const torch::Tensor& rows) {
  CheckFloat(rows, "Int8EncodeRows: rows");
  torch::Tensor absmax = rows.abs().amax(1);
  torch::Tensor scale =
      torch::where(absmax > 0, absmax / 127.0, torch::ones_like(absmax));
  torch::Tensor codes = torch::round(rows / scale.unsqueeze(1))
                            .clamp_(-127, 127)
                            .to(torch::kInt8);
  return {codes, scale.contiguous()};
}

torch::Tensor Int8DecodeRows(const torch::Tensor& q,
                             const torch::Tensor& scale) {
  return q.to(torch::kFloat32) * scale.unsqueeze(1);
}

}  // namespace ops

std::pair<torch::Tensor, torch::Tensor> Nf4Encode(const torch::Tensor& values) {
  if (!values.is_cpu()) return ops::Nf4Encode(values);
  CheckFloat(values, "Nf4Encode: values");
  const torch::Tensor x = values.contiguous();
  const int64_t n = x.numel();
  const int64_t nblocks = (n + kBlock - 1) / kBlock;
  torch::Tensor packed = torch::empty({nblocks * kBlock / 2}, torch::kUInt8);
  torch::Tensor absmax = torch::empty({nblocks}, torch::kFloat32);
  const float* in = x.data_ptr<float>();
  uint8_t* out = packed.data_ptr<uint8_t>();
  float* amax = absmax.data_ptr<float>();
  const float* mid = Midpoints().data();
  at::parallel_for(
      0, nblocks, kGrainElements / kBlock, [&](int64_t b0, int64_t b1) {
        std::array<float, kBlock> block{};
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t len = std::min(kBlock, n - b * kBlock);
          std::copy(in + b * kBlock, in + b * kBlock + len, block.begin());
          std::fill(block.begin() + len, block.end(), 0.0f);
          float m = 0.0f;
          for (float v : block) m = std::max(m, std::fabs(v));
          amax[b] = m;
          const float safe = m > 0.0f ? m : 1.0f;
          uint8_t* o = out + b * kBlock / 2;
          for (int64_t i = 0; i < kBlock / 2; ++i) {
            o[i] = static_cast<uint8_t>(
                Nf4Code(block[2 * i] / safe, mid) |
                (Nf4Code(block[2 * i + 1] / safe, mid) << 4));
          }
        }
      });
  return {packed, absmax};
}

torch::Tensor Nf4Decode(const torch::Tensor& packed,
                        const torch::Tensor& absmax) {
  if (!packed.is_cpu()) return ops::Nf4Decode(packed, absmax);
  const int64_t nblocks = absmax.numel();
  TORCH_CHECK(packed.numel() == nblocks * kBlock / 2,
              "Nf4Decode: ", packed.numel(), " code bytes for ", nblocks,
              " blocks");
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8, "Nf4Decode: codes ",
              packed.scalar_type());
  CheckFloat(absmax, "Nf4Decode: absmax");
  const torch::Tensor p = packed.contiguous(), a = absmax.contiguous();
  torch::Tensor values = torch::empty({nblocks * kBlock}, torch::kFloat32);
  const uint8_t* in = p.data_ptr<uint8_t>();
  const float* scale = a.data_ptr<float>();
  float* out = values.data_ptr<float>();
  const float* level = Nf4Levels().data();
  at::parallel_for(0, nblocks, kGrainElements / kBlock,
                   [&](int64_t b0, int64_t b1) {
                     for (int64_t b = b0; b < b1; ++b) {
                       const float s = scale[b];
                       const uint8_t* c = in + b * kBlock / 2;
                       float* o = out + b * kBlock;
                       for (int64_t i = 0; i < kBlock / 2; ++i) {
                         o[2 * i] = level[c[i] & 15] * s;
                         o[2 * i + 1] = level[c[i] >> 4] * s;
                       }
                     }
                   });
  return values;
}

std::pair<torch::Tensor, torch::Tensor> Int8EncodeRows(
    const torch::Tensor& rows) {
  if (!rows.is_cpu()) return ops::Int8EncodeRows(rows);
  CheckFloat(rows, "Int8EncodeRows: rows");
  TORCH_CHECK(rows.dim() == 2, "Int8EncodeRows: rows ", rows.sizes());
  const torch::Tensor x = rows.contiguous();
  const int64_t n = x.size(0), k = x.size(1);
  torch::Tensor codes = torch::empty({n, k}, torch::kInt8);
  torch::Tensor scale = torch::empty({n}, torch::kFloat32);
  const float* in = x.data_ptr<float>();
  int8_t* q = codes.data_ptr<int8_t>();
  float* s = scale.data_ptr<float>();
  const int64_t grain =
      std::max<int64_t>(1, kGrainElements / std::max<int64_t>(k, 1));
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = in + r * k;
      float m = 0.0f;
      for (int64_t j = 0; j < k; ++j) m = std::max(m, std::fabs(row[j]));
      const float sc = m > 0.0f ? m / 127.0f : 1.0f;
      s[r] = sc;
      for (int64_t j = 0; j < k; ++j) {
        const float v = std::nearbyint(row[j] / sc);
        q[r * k + j] =
            static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
      }
    }
  });
  return {codes, scale};
}

torch::Tensor Int8DecodeRows(const torch::Tensor& q,
                             const torch::Tensor& scale) {
  if (!q.is_cpu()) return ops::Int8DecodeRows(q, scale);
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == torch::kInt8 &&
                  scale.numel() == q.size(0),
              "Int8DecodeRows: codes ", q.sizes(), " ", q.scalar_type(),
              " with ", scale.numel(), " scales");
  CheckFloat(scale, "Int8DecodeRows: scale");
  const torch::Tensor c = q.contiguous(), sc = scale.contiguous();
  const int64_t n = c.size(0), k = c.size(1);
  torch::Tensor values = torch::empty({n, k}, torch::kFloat32);
  const int8_t* in = c.data_ptr<int8_t>();
  const float* s = sc.data_ptr<float>();
  float* out = values.data_ptr<float>();
  const int64_t grain =
      std::max<int64_t>(1, kGrainElements / std::max<int64_t>(k, 1));
  at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < k; ++j) {
        out[r * k + j] = static_cast<float>(in[r * k + j]) * s[r];
      }
    }
  });
  return values;
}

}  // namespace quant
}  // namespace model
}  // namespace fedpeft
