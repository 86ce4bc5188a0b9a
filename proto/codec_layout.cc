// The checks and message formatting every codec shares: tensor names, dtype
// names, and CheckLayout, which validates what a TensorHeader says about its
// payload (dtype, codec, bits, block size, shape, encoded_bytes) before any
// memory is allocated for it.
#include <cinttypes>
#include <cstdio>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "common/text.h"
#include "proto/codec_internal.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace transport {
namespace internal {

const char* DTypeName(int dtype) {
  switch (dtype) {
    case proto::DTYPE_F32:
      return "F32";
    case proto::DTYPE_F16:
      return "F16";
    case proto::DTYPE_BF16:
      return "BF16";
    default:
      return "unknown";
  }
}

// "F32", "F16", "BF16", or LibTorch's name for other dtypes.
std::string TorchDTypeName(torch::Dtype dtype) {
  const proto::DType wire = ToProtoDType(dtype);
  if (wire != proto::DTYPE_UNSPECIFIED) return DTypeName(wire);
  return c10::toString(dtype);
}

std::string FloatString(float v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(v));
  return buf;
}

std::string Hex64(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%016" PRIx64, v);
  return buf;
}

std::string CheckName(const std::string& name) {
  if (name.empty()) return "empty tensor name";
  if (name.size() > kMaxTensorNameLength) {
    return "tensor name of " + std::to_string(name.size()) +
           " characters (at most " + std::to_string(kMaxTensorNameLength) +
           ") starting '" + name.substr(0, 32) + "...'";
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    if (c < 0x20 || c > 0x7e) {
      return "tensor name with non-printable byte 0x" +
             [](unsigned v) {
               const char* hex = "0123456789abcdef";
               return std::string{hex[v >> 4], hex[v & 15]};
             }(c) +
             " at offset " + std::to_string(i) + " (expected printable ASCII)";
    }
  }
  return "";
}

Status CheckLayout(const proto::TensorHeader& header,
                   const std::string& subject, int64_t max_elements,
                   Layout* layout) {
  std::optional<torch::Dtype> dtype = FromProtoDType(header.dtype());
  if (!dtype) {
    return Status::InvalidArgument(subject + ": dtype " +
                                   std::to_string(header.dtype()) +
                                   " (expected F32=1, F16=2 or BF16=3)");
  }
  layout->dtype = *dtype;
  switch (header.codec()) {
    case proto::CODEC_RAW:
      if (header.bits() != 0 || header.block_size() != 0) {
        return Status::InvalidArgument(
            subject + ": bits " + std::to_string(header.bits()) +
            " and block_size " + std::to_string(header.block_size()) +
            " with CODEC_RAW (expected 0 and 0: only CODEC_QUANTIZED uses "
            "them)");
      }
      layout->quantized = false;
      break;
    case proto::CODEC_QUANTIZED:
      if (!ValidBits(header.bits())) {
        return Status::InvalidArgument(
            subject + ": bits " + std::to_string(header.bits()) +
            " with CODEC_QUANTIZED (expected 2, 4 or 8)");
      }
      if (header.block_size() < 1 || header.block_size() > kMaxBlockSize) {
        return Status::InvalidArgument(subject + ": block_size " +
                                       std::to_string(header.block_size()) +
                                       " with CODEC_QUANTIZED (expected 1 to " +
                                       std::to_string(kMaxBlockSize) + ")");
      }
      layout->quantized = true;
      layout->bits = static_cast<int>(header.bits());
      layout->block_size = header.block_size();
      break;
    case proto::CODEC_MASKED:
      if (header.bits() != 0 || header.block_size() != 0 ||
          *dtype != torch::kFloat32) {
        return Status::InvalidArgument(
            subject + ": CODEC_MASKED with dtype " + DTypeName(header.dtype()) +
            ", bits " + std::to_string(header.bits()) + " and block_size " +
            std::to_string(header.block_size()) +
            " (expected F32 words, 0 and 0)");
      }
      layout->masked = true;
      break;
    default:
      return Status::InvalidArgument(
          subject + ": codec " + std::to_string(header.codec()) +
          " (expected CODEC_RAW=0, CODEC_QUANTIZED=1 or CODEC_MASKED=2; "
          "this build decodes no other)");
  }
  if (header.shape_size() > kMaxTensorDims) {
    return Status::InvalidArgument(
        subject + ": " + std::to_string(header.shape_size()) +
        " dimensions (at most " + std::to_string(kMaxTensorDims) + ")");
  }
  // Element count, checked against the limit at every step so it cannot
  // overflow: numel <= max_elements <= INT64_MAX. The nonzero dimensions are
  // bounded even when another one is 0: LibTorch computes strides from them,
  // and [0, 2^62, 2^62] would overflow (the fuzzer's find).
  int64_t extent = 1;  // product of the nonzero dimensions
  bool empty = false;
  for (int i = 0; i < header.shape_size(); ++i) {
    const int64_t d = header.shape(i);
    if (d < 0) {
      return Status::InvalidArgument(
          subject + ": shape " + ShapeString(header.shape()) +
          " has negative dimension " + std::to_string(i) +
          " (expected sizes >= 0)");
    }
    if (d == 0) {
      empty = true;
      continue;
    }
    if (extent > max_elements / d) {
      return Status::InvalidArgument(
          subject + ": shape " + ShapeString(header.shape()) +
          " has more than max_elements_per_tensor " +
          std::to_string(max_elements) +
          " elements (counting nonzero dimensions only)");
    }
    extent *= d;
  }
  const int64_t numel = empty ? 0 : extent;
  if (numel > max_elements) {  // a scalar with limit 0
    return Status::InvalidArgument(
        subject + ": " + std::to_string(numel) +
        " elements, more than max_elements_per_tensor " +
        std::to_string(max_elements));
  }
  layout->numel = numel;
  layout->shape.assign(header.shape().begin(), header.shape().end());

  if (!layout->quantized) {
    const uint64_t element_size = c10::elementSize(*dtype);
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(numel), element_size,
                               &nbytes)) {
      return Status::InvalidArgument(subject + ": shape " +
                                     ShapeString(header.shape()) +
                                     " takes more than 2^64 bytes");
    }
    if (header.encoded_bytes() != nbytes) {
      return Status::InvalidArgument(
          subject + ": encoded_bytes " +
          std::to_string(header.encoded_bytes()) + " but shape " +
          ShapeString(header.shape()) + " of " + DTypeName(header.dtype()) +
          " takes " + std::to_string(nbytes) + " bytes raw");
    }
    layout->bytes = nbytes;
    return Status::Ok();
  }
  std::optional<uint64_t> nbytes =
      QuantizedBytes(numel, layout->bits, layout->block_size);
  if (!nbytes) {
    return Status::InvalidArgument(subject + ": shape " +
                                   ShapeString(header.shape()) +
                                   " takes more than 2^64 bytes quantized");
  }
  if (header.encoded_bytes() != *nbytes) {
    return Status::InvalidArgument(
        subject + ": encoded_bytes " + std::to_string(header.encoded_bytes()) +
        " but shape " + ShapeString(header.shape()) + " quantized to " +
        std::to_string(layout->bits) + " bits in blocks of " +
        std::to_string(layout->block_size) + " takes " +
        std::to_string(*nbytes) + " bytes");
  }
  layout->bytes = *nbytes;
  return Status::Ok();
}

}  // namespace internal
}  // namespace transport
}  // namespace fedpeft
