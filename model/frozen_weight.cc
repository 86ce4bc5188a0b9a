#include "model/frozen_weight.h"

#include <algorithm>
#include <tuple>
#include <utility>
#include <vector>

#include "model/quant_codec.h"

namespace fedpeft {
namespace model {

StatusOr<BaseDtype> ParseBaseDtype(const std::string& name) {
  if (name == "float32") return BaseDtype::kFloat32;
  if (name == "bfloat16") return BaseDtype::kBFloat16;
  if (name == "float16") return BaseDtype::kFloat16;
  if (name == "int8") return BaseDtype::kInt8;
  if (name == "nf4") return BaseDtype::kNf4;
  return Status::InvalidArgument(
      "base dtype '" + name +
      "': expected float32, bfloat16, float16, int8 or nf4");
}

const char* BaseDtypeName(BaseDtype dtype) {
  switch (dtype) {
    case BaseDtype::kFloat32:
      return "float32";
    case BaseDtype::kBFloat16:
      return "bfloat16";
    case BaseDtype::kFloat16:
      return "float16";
    case BaseDtype::kInt8:
      return "int8";
    case BaseDtype::kNf4:
      return "nf4";
  }
  return "?";
}

torch::Dtype DenseStorageDtype(BaseDtype dtype) {
  switch (dtype) {
    case BaseDtype::kFloat32:
      return torch::kFloat32;
    case BaseDtype::kFloat16:
      return torch::kFloat16;
    default:
      return torch::kBFloat16;
  }
}

const std::array<float, 16>& Nf4Levels() {
  // QLoRA (arXiv 2305.14314), Appendix E: quantiles of N(0, 1) normalized
  // to [-1, 1], with an exact zero.
  static const std::array<float, 16> kLevels = {-1.0f,
                                                -0.6961928009986877f,
                                                -0.5250730514526367f,
                                                -0.39491748809814453f,
                                                -0.28444138169288635f,
                                                -0.18477343022823334f,
                                                -0.09105003625154495f,
                                                0.0f,
                                                0.07958029955625534f,
                                                0.16093020141124725f,
                                                0.24611230194568634f,
                                                0.33791524171829224f,
                                                0.44070982933044434f,
                                                0.5626170039176941f,
                                                0.7229568362236023f,
                                                1.0f};
  return kLevels;
}

FrozenWeight FrozenWeight::Dense(torch::Tensor w) {
  TORCH_CHECK(w.dim() == 2 && w.is_floating_point(),
              "FrozenWeight::Dense needs a 2-D floating tensor, got ",
              w.sizes(), " ", w.scalar_type());
  FrozenWeight f;
  switch (w.scalar_type()) {
    case torch::kBFloat16:
      f.kind_ = BaseDtype::kBFloat16;
      break;
    case torch::kFloat16:
      f.kind_ = BaseDtype::kFloat16;
      break;
    default:
      f.kind_ = BaseDtype::kFloat32;  // float32 or float64: dense as is
      break;
  }
  f.rows_ = w.size(0);
  f.cols_ = w.size(1);
  f.data_ = std::move(w);
  return f;
}

FrozenWeight FrozenWeight::From(const torch::Tensor& w, BaseDtype kind) {
  TORCH_CHECK(w.dim() == 2 && w.is_floating_point() && w.numel() > 0,
              "FrozenWeight::From needs a non-empty 2-D floating tensor, got ",
              w.sizes(), " ", w.scalar_type());
  torch::NoGradGuard no_grad;
  if (!IsQuantized(kind)) {
    return Dense(w.to(DenseStorageDtype(kind)).contiguous());
  }
  FrozenWeight f;
  f.kind_ = kind;
  f.rows_ = w.size(0);
  f.cols_ = w.size(1);
  torch::Tensor wf = w.to(torch::kFloat32);
  if (kind == BaseDtype::kInt8) {
    std::tie(f.data_, f.scale_) = quant::Int8EncodeRows(wf);
    return f;
  }
  // nf4: codes [nb * 32], block absmax [nb]
  torch::Tensor absmax;
  std::tie(f.data_, absmax) = quant::Nf4Encode(wf.reshape({-1}));
  // Double quantization of the block absmax values.
  const int64_t nb = absmax.numel();
  // The mean in double, then float: the value every dequantization adds.
  f.absmax_mean_ =
      static_cast<float>(absmax.to(torch::kFloat64).mean().item<double>());
  torch::Tensor groups =
      quant::ZeroPadTo(absmax - f.absmax_mean_, kNf4AbsmaxBlockSize)
          .view({-1, kNf4AbsmaxBlockSize});
  torch::Tensor absmax_codes;
  std::tie(absmax_codes, f.scale2_) = quant::Int8EncodeRows(groups);
  f.scale_ = absmax_codes.reshape({-1}).narrow(0, 0, nb).contiguous();
  return f;
}

FrozenWeight FrozenWeight::FromParts(BaseDtype kind, int64_t rows, int64_t cols,
                                     torch::Tensor data, torch::Tensor scale,
                                     torch::Tensor scale2, double absmax_mean) {
  FrozenWeight f;
  f.kind_ = kind;
  f.rows_ = rows;
  f.cols_ = cols;
  f.data_ = std::move(data);
  f.scale_ = std::move(scale);
  f.scale2_ = std::move(scale2);
  f.absmax_mean_ = absmax_mean;
  return f;
}

int64_t FrozenWeight::nbytes() const {
  int64_t n = 0;
  for (const torch::Tensor* t : {&data_, &scale_, &scale2_}) {
    if (t->defined()) n += static_cast<int64_t>(t->nbytes());
  }
  return n;
}

torch::Tensor FrozenWeight::DequantizeNf4(int64_t begin, int64_t end) const {
  const int64_t b0 = begin / kNf4BlockSize;
  const int64_t b1 = (end + kNf4BlockSize - 1) / kNf4BlockSize;
  const int64_t nblocks = b1 - b0;
  torch::Tensor bytes =
      data_.narrow(0, b0 * kNf4BlockSize / 2, nblocks * kNf4BlockSize / 2);
  // Block absmax values back from their int8 codes.
  torch::Tensor group =
      torch::arange(b0, b1, data_.options().dtype(torch::kInt64))
          .div(kNf4AbsmaxBlockSize, "floor");
  torch::Tensor absmax = scale_.narrow(0, b0, nblocks).to(torch::kFloat32) *
                             scale2_.index_select(0, group) +
                         absmax_mean_;
  return quant::Nf4Decode(bytes, absmax)
      .narrow(0, begin - b0 * kNf4BlockSize, end - begin);
}

torch::Tensor FrozenWeight::Rows(int64_t begin, int64_t count,
                                 torch::Dtype dtype) const {
  TORCH_CHECK(begin >= 0 && count >= 0 && begin + count <= rows_, "rows [",
              begin, ", ", begin + count, ") out of [0, ", rows_, ")");
  torch::NoGradGuard no_grad;
  switch (kind_) {
    case BaseDtype::kInt8:
      return quant::Int8DecodeRows(data_.narrow(0, begin, count),
                                   scale_.narrow(0, begin, count))
          .to(dtype);
    case BaseDtype::kNf4:
      return DequantizeNf4(begin * cols_, (begin + count) * cols_)
          .view({count, cols_})
          .to(dtype);
    default: {
      torch::Tensor rows = data_.narrow(0, begin, count);
      return rows.scalar_type() == dtype ? rows : rows.to(dtype);
    }
  }
}

torch::Tensor FrozenWeight::Gather(const torch::Tensor& ids,
                                   torch::Dtype dtype) const {
  TORCH_CHECK(!IsQuantized(kind_),
              "FrozenWeight::Gather needs a dense "
              "weight, this one is ",
              BaseDtypeName(kind_));
  torch::Tensor rows = torch::embedding(data_, ids);
  return rows.scalar_type() == dtype ? rows : rows.to(dtype);
}

namespace {

// Rows per block: at most block_elems elements (at least one row), the
// rows split evenly (a 4864-row matrix in two blocks of 2432, not 4681 and
// 183).
int64_t BlockRows(const FrozenWeight& w, int64_t block_elems) {
  const int64_t most = std::max<int64_t>(1, block_elems / w.cols());
  const int64_t blocks = (w.rows() + most - 1) / most;
  return (w.rows() + blocks - 1) / blocks;
}

torch::Tensor BlockedForward(const torch::Tensor& x, const FrozenWeight& w,
                             int64_t block) {
  if (block >= w.rows())
    return torch::matmul(x, w.Materialize(x.scalar_type()).t());
  std::vector<torch::Tensor> outs;
  for (int64_t r = 0; r < w.rows(); r += block) {
    const int64_t n = std::min(block, w.rows() - r);
    outs.push_back(torch::matmul(x, w.Rows(r, n, x.scalar_type()).t()));
  }
  return torch::cat(outs, -1);
}

// d x = d y W, in the same blocks of rows.
torch::Tensor BlockedBackward(const torch::Tensor& grad, const FrozenWeight& w,
                              int64_t block) {
  if (block >= w.rows())
    return torch::matmul(grad, w.Materialize(grad.scalar_type()));
  torch::Tensor out;
  for (int64_t r = 0; r < w.rows(); r += block) {
    const int64_t n = std::min(block, w.rows() - r);
    torch::Tensor part =
        torch::matmul(grad.narrow(-1, r, n), w.Rows(r, n, grad.scalar_type()));
    out = out.defined() ? out.add_(part) : part;
  }
  return out;
}

class FrozenLinearFunction
    : public torch::autograd::Function<FrozenLinearFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               const torch::Tensor& x, const FrozenWeight& w,
                               int64_t block) {
    auto& saved = ctx->saved_data;
    saved["block"] = block;
    saved["kind"] = static_cast<int64_t>(w.kind());
    saved["rows"] = w.rows();
    saved["cols"] = w.cols();
    saved["data"] = w.data();
    if (w.scale().defined()) saved["scale"] = w.scale();
    if (w.scale2().defined()) saved["scale2"] = w.scale2();
    saved["mean"] = w.absmax_mean();
    return BlockedForward(x, w, block);
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      torch::autograd::variable_list grads) {
    auto& saved = ctx->saved_data;
    auto tensor = [&saved](const char* key) {
      auto it = saved.find(key);
      return it == saved.end() ? torch::Tensor() : it->second.toTensor();
    };
    FrozenWeight w = FrozenWeight::FromParts(
        static_cast<BaseDtype>(saved["kind"].toInt()), saved["rows"].toInt(),
        saved["cols"].toInt(), tensor("data"), tensor("scale"),
        tensor("scale2"), saved["mean"].toDouble());
    return {BlockedBackward(grads[0], w, saved["block"].toInt()),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor FrozenLinear(const torch::Tensor& x, const FrozenWeight& w,
                           const torch::Tensor& bias, int64_t block_elems) {
  TORCH_CHECK(w.defined(), "FrozenLinear of an empty weight");
  torch::Tensor y;
  if (!IsQuantized(w.kind()) && w.data().scalar_type() == x.scalar_type()) {
    // Autograd keeps a reference to the weight, not a copy.
    y = torch::linear(x, w.data());
  } else if (!x.requires_grad() || !torch::GradMode::is_enabled()) {
    y = BlockedForward(x, w, BlockRows(w, block_elems));  // no graph to keep
  } else {
    y = FrozenLinearFunction::apply(x, w, BlockRows(w, block_elems));
  }
  return bias.defined() ? y + bias : y;
}

}  // namespace model
}  // namespace fedpeft
