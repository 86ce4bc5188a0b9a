// One tensor to and from the wire: EncodeTensor and DecodeTensor (and the
// DecodePayload both DecodeTensor and TensorDecoder use), CodecOptions, the
// mapping between torch and wire dtypes, and the raw F32/F16 codec itself.
// Quantized payloads are made and read by codec_quantized.cc.
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <string>

#include "proto/codec_internal.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace transport {

using internal::CheckLayout;
using internal::DecodePayload;
using internal::FirstNonFinite;
using internal::FloatString;
using internal::Layout;
using internal::QuantizedBytes;
using internal::QuantizePayload;
using internal::ValidBits;

namespace internal {

StatusOr<torch::Tensor> DecodePayload(const char* payload, const Layout& layout,
                                      const std::string& subject) {
  if (layout.quantized) {
    RETURN_IF_ERROR(CheckQuantized(payload, layout, subject));
  }
  torch::Tensor out;
  try {
    out = torch::empty(layout.shape,
                       torch::TensorOptions().dtype(layout.decoded_dtype()));
  } catch (const c10::Error& e) {
    return Status::Internal(subject + ": allocating " +
                            std::to_string(layout.numel) +
                            " elements: " + e.what_without_backtrace());
  }
  if (!layout.quantized) {
    if (layout.bytes > 0) std::memcpy(out.data_ptr(), payload, layout.bytes);
    return out;
  }
  float* dst = out.data_ptr<float>();
  DequantizePayload(payload, layout, dst);
  return out;
}

}  // namespace internal

proto::DType ToProtoDType(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat32:
      return proto::DTYPE_F32;
    case torch::kFloat16:
      return proto::DTYPE_F16;
    case torch::kBFloat16:
      return proto::DTYPE_BF16;
    default:
      return proto::DTYPE_UNSPECIFIED;
  }
}

std::optional<torch::Dtype> FromProtoDType(int dtype) {
  switch (dtype) {
    case proto::DTYPE_F32:
      return torch::kFloat32;
    case proto::DTYPE_F16:
      return torch::kFloat16;
    case proto::DTYPE_BF16:
      return torch::kBFloat16;
    default:
      return std::nullopt;
  }
}

Status ValidateCodecOptions(const CodecOptions& options,
                            const std::string& context) {
  std::string errors;
  if (options.bits != 32 && options.bits != 16 && !ValidBits(options.bits)) {
    errors += context + ".bits: must be one of 32, 16, 8, 4, 2, got " +
              std::to_string(options.bits);
  }
  if (options.block_size < 1 || options.block_size > kMaxBlockSize) {
    if (!errors.empty()) errors += "; ";
    errors += context + ".block_size: must be in [1, " +
              std::to_string(kMaxBlockSize) + "], got " +
              std::to_string(options.block_size);
  }
  if (!errors.empty()) return Status::InvalidArgument(errors);
  return Status::Ok();
}

uint64_t EncodedPayloadBytes(int64_t numel, const CodecOptions& options) {
  if (numel < 0 || !ValidateCodecOptions(options, "").ok()) return 0;
  const uint64_t n = static_cast<uint64_t>(numel);
  uint64_t bytes = 0;
  if (options.bits == 32 || options.bits == 16) {
    if (__builtin_mul_overflow(n, uint64_t(options.bits / 8), &bytes)) return 0;
    return bytes;
  }
  return QuantizedBytes(numel, options.bits, options.block_size).value_or(0);
}

StatusOr<WireTensor> EncodeTensor(const torch::Tensor& tensor,
                                  const CodecOptions& options,
                                  std::mt19937_64* rng) {
  RETURN_IF_ERROR(ValidateCodecOptions(options, "compression"));
  if (options.bits < 16 && rng == nullptr) {
    return Status::InvalidArgument(
        "compression.bits " + std::to_string(options.bits) +
        ": stochastic rounding needs a random generator, got none");
  }
  if (!tensor.defined()) {
    return Status::InvalidArgument("undefined tensor, cannot encode");
  }
  if (!tensor.is_floating_point()) {
    return Status::InvalidArgument(
        "dtype " + std::string(c10::toString(tensor.scalar_type())) +
        " cannot be encoded (expected a floating-point tensor)");
  }
  if (tensor.dim() > kMaxTensorDims) {
    return Status::InvalidArgument(std::to_string(tensor.dim()) +
                                   " dimensions, at most " +
                                   std::to_string(kMaxTensorDims) + " travel");
  }
  WireTensor wire;
  proto::TensorHeader& header = wire.header;
  try {
    // Aliases `tensor` when it is a contiguous CPU F32 tensor.
    const torch::Tensor t =
        tensor.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    const int64_t numel = t.numel();
    const float* x = t.data_ptr<float>();
    // Quantization checks as it goes, in its min/max pass.
    const int64_t bad = options.bits >= 16 ? FirstNonFinite(x, numel) : numel;
    if (bad < numel) {
      return Status::InvalidArgument(
          "element " + std::to_string(bad) + " is " + FloatString(x[bad]) +
          " (as F32; expected finite values: did training diverge?)");
    }
    for (int64_t d : t.sizes()) header.add_shape(d);
    const uint64_t nbytes = EncodedPayloadBytes(numel, options);
    header.set_encoded_bytes(nbytes);
    if (options.bits == 32) {
      header.set_dtype(proto::DTYPE_F32);
      header.set_codec(proto::CODEC_RAW);
      wire.payload.assign(reinterpret_cast<const char*>(x), nbytes);
      return wire;
    }
    if (options.bits == 16) {
      const torch::Tensor h = t.to(torch::kHalf);
      const int64_t over =
          FirstNonFinite(h.to(torch::kFloat32).data_ptr<float>(), numel);
      if (over < numel) {
        return Status::InvalidArgument(
            "element " + std::to_string(over) + " = " + FloatString(x[over]) +
            " is beyond the F16 range (max 65504; send it with bits 32)");
      }
      header.set_dtype(proto::DTYPE_F16);
      header.set_codec(proto::CODEC_RAW);
      wire.payload.assign(static_cast<const char*>(h.data_ptr()), nbytes);
      return wire;
    }
    header.set_dtype(proto::DTYPE_F32);
    header.set_codec(proto::CODEC_QUANTIZED);
    header.set_bits(static_cast<uint32_t>(options.bits));
    header.set_block_size(static_cast<uint32_t>(options.block_size));
    wire.payload.assign(nbytes, '\0');
    RETURN_IF_ERROR(
        QuantizePayload(x, numel, options, rng, wire.payload.data()));
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("encoding a tensor: ") +
                            e.what_without_backtrace());
  }
  return wire;
}

StatusOr<torch::Tensor> DecodeTensor(const WireTensor& wire,
                                     const std::string& name) {
  const std::string subject = "tensor '" + name + "'";
  Layout layout;
  RETURN_IF_ERROR(CheckLayout(wire.header, subject,
                              std::numeric_limits<int64_t>::max(), &layout));
  if (wire.payload.size() != layout.bytes) {
    return Status::InvalidArgument(
        subject + ": payload of " + std::to_string(wire.payload.size()) +
        " bytes, expected its encoded_bytes " + std::to_string(layout.bytes));
  }
  return DecodePayload(wire.payload.data(), layout, subject);
}

}  // namespace transport
}  // namespace fedpeft
