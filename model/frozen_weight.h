// The frozen base's big matrices in the precision the user chose for them
// (`model.base_dtype`), and the one matmul that reads them.
//
//  * float32 / bfloat16 / float16: the matrix as a plain tensor of that
//    dtype. With a float32 compute dtype a bf16/f16 base halves the
//    weights' memory; each matmul converts the matrix (or a block of its
//    rows) to the compute dtype on the fly.
//  * int8: per-output-row absmax scales (LLM.int8()'s vector-wise scheme
//    without its outlier split): w ~ q * absmax / 127, q in [-127, 127].
//  * nf4: QLoRA's 4-bit NormalFloat (Dettmers et al. 2023, arXiv
//    2305.14314): blocks of 64 consecutive values (row-major), each scaled by
//    its absmax to [-1, 1] and rounded to the nearest of the 16 NF4 levels
//    (the paper's table), two codes a byte (element 2i in the low nibble).
//    Double quantization as in QLoRA: the per-block absmax values (fp32) are
//    centred on their mean and stored as int8 with one fp32 scale per 256
//    blocks: 4.127 bits per weight in all. QLoRA stores these second-level
//    codes as 8-bit floats; ours are linear int8, with the same footprint.
//
// FrozenLinear computes x W^T (+ bias) with an autograd node that keeps only
// the stored form: the dequantized matrix exists for one matmul, in blocks
// of rows, in forward and again in backward (d x = d y W). No gradient
// flows to W: base weights are frozen.
//
// Thread-safety: a FrozenWeight is immutable after construction and may be
// read from any thread; copies share storage.
#ifndef FEDPEFT_MODEL_FROZEN_WEIGHT_H_
#define FEDPEFT_MODEL_FROZEN_WEIGHT_H_

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace fedpeft {
namespace model {

enum class BaseDtype { kFloat32, kBFloat16, kFloat16, kInt8, kNf4 };

// "float32" | "bfloat16" | "float16" | "int8" | "nf4"; InvalidArgument
// naming the value and the choices otherwise.
StatusOr<BaseDtype> ParseBaseDtype(const std::string& name);
const char* BaseDtypeName(BaseDtype dtype);
// The torch dtype a dense kind is stored in (kInt8/kNf4: their embedding and
// output layer's, bfloat16).
torch::Dtype DenseStorageDtype(BaseDtype dtype);
inline bool IsQuantized(BaseDtype d) {
  return d == BaseDtype::kInt8 || d == BaseDtype::kNf4;
}

// The 16 NF4 levels, ascending (QLoRA, Appendix E).
const std::array<float, 16>& Nf4Levels();

inline constexpr int64_t kNf4BlockSize = 64;
inline constexpr int64_t kNf4AbsmaxBlockSize = 256;

class FrozenWeight {
 public:
  FrozenWeight() = default;

  // `w` [rows, cols], any floating dtype, kept as it is (not copied).
  static FrozenWeight Dense(torch::Tensor w);
  // `w` [rows, cols] floating, stored as `kind`: dense kinds convert (copy),
  // kInt8/kNf4 quantize. The result is on w's device.
  static FrozenWeight From(const torch::Tensor& w, BaseDtype kind);

  bool defined() const { return rows_ > 0; }
  BaseDtype kind() const { return kind_; }
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  torch::Device device() const { return data_.device(); }
  // Bytes held (codes and scales).
  int64_t nbytes() const;

  // Rows [begin, begin + count) as a fresh [count, cols] tensor of `dtype`
  // (a view, not a copy, for a dense weight already of `dtype`).
  torch::Tensor Rows(int64_t begin, int64_t count, torch::Dtype dtype) const;
  torch::Tensor Materialize(torch::Dtype dtype) const {
    return Rows(0, rows_, dtype);
  }
  // Rows `ids` (int64, any shape) of a dense weight in `dtype`: an
  // embedding lookup. REQUIRES: a dense kind.
  torch::Tensor Gather(const torch::Tensor& ids, torch::Dtype dtype) const;

  // The stored tensors, for autograd contexts and tests: dense/int8 data,
  // int8 row scales or nf4 block-absmax codes, nf4 second-level scales.
  const torch::Tensor& data() const { return data_; }
  const torch::Tensor& scale() const { return scale_; }
  const torch::Tensor& scale2() const { return scale2_; }
  double absmax_mean() const { return absmax_mean_; }
  // Rebuilds a weight from the stored tensors above. REQUIRES: they came
  // from a FrozenWeight of this kind and shape.
  static FrozenWeight FromParts(BaseDtype kind, int64_t rows, int64_t cols,
                                torch::Tensor data, torch::Tensor scale,
                                torch::Tensor scale2, double absmax_mean);

 private:
  // nf4: values [begin, end) of the flattened matrix (block-aligned begin).
  torch::Tensor DequantizeNf4(int64_t begin, int64_t end) const;

  BaseDtype kind_ = BaseDtype::kFloat32;
  int64_t rows_ = 0;
  int64_t cols_ = 0;
  torch::Tensor data_;
  torch::Tensor scale_;
  torch::Tensor scale2_;
  double absmax_mean_ = 0.0;
};

// x [..., cols] times w^T (+ bias [rows]) -> [..., rows] in x's dtype. A
// dense weight of x's dtype takes torch::linear; anything else goes through
// an autograd node that materializes at most `block_elems` elements of w at
// a time (at least one row) and keeps only the stored form for backward.
// Elements of w materialized at once by FrozenLinear (4 Mi: 16 MiB in
// float32; Llama-3.2-1B's 8192 x 2048 MLP matrices go in 4 blocks of rows,
// Qwen2.5-0.5B's 4864 x 896 in 2). With a whole 64 MiB matrix at a time a
// Llama-3.2-1B bfloat16 step peaked 283 MiB higher (3348 vs 3065 MiB).
inline constexpr int64_t kFrozenLinearBlockElems = int64_t{1} << 22;

torch::Tensor FrozenLinear(const torch::Tensor& x, const FrozenWeight& w,
                           const torch::Tensor& bias = {},
                           int64_t block_elems = kFrozenLinearBlockElems);

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_FROZEN_WEIGHT_H_
