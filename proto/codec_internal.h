// Helpers shared by the files that implement proto/tensor_codec.h. Not part
// of the public API: include "proto/tensor_codec.h" instead.
//
// Which file holds what:
//   codec_layout.cc          message formatting, tensor-name checks, and
//                            CheckLayout: what a TensorHeader says about its
//                            payload, validated (every codec)
//   codec_tensor.cc          one tensor <-> WireTensor (EncodeTensor,
//                            DecodeTensor): CodecOptions, dtype mapping, the
//                            raw F32/F16 codec, dispatch to the quantizer
//   codec_quantized.cc       CODEC_QUANTIZED: the stochastic b-bit kernels,
//                            bit packing, CheckQuantized, dequantization
//   codec_masked.cc          CODEC_MASKED: secure aggregation's int32 words
//   codec_schema.cc          tensors by index: Schema::Of, NameHeader
//   tensor_stream_writer.cc  TensorMap -> chunks (WriteTensors,
//                            EncodeTensors)
//   tensor_decoder.cc        chunks -> TensorMap (TensorDecoder)
//
// Thread-safety: every function here is reentrant; none keeps state.
#ifndef FEDPEFT_PROTO_CODEC_INTERNAL_H_
#define FEDPEFT_PROTO_CODEC_INTERNAL_H_

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/text.h"
#include "proto/fedpeft.pb.h"
#include "proto/tensor_codec.h"

// CODEC_RAW is little-endian and both ends memcpy element bytes; a big-endian
// host would need a byte swap in EncodeTensors and TensorDecoder::AddData.
// CODEC_QUANTIZED block parameters are memcpy'd F32 likewise.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fedpeft's tensor codec assumes a little-endian host"
#endif

namespace fedpeft {
namespace transport {
namespace internal {

// Bytes of one block's parameters: min and step, F32 each.
inline constexpr uint64_t kBlockParamBytes = 8;

// ---- codec_layout.cc: messages, names, header layout -----------------------

// "F32", "F16" or "BF16" for a wire dtype; "unknown" for any other value.
const char* DTypeName(int dtype);

// "F32", "F16", "BF16", or LibTorch's name for other dtypes.
std::string TorchDTypeName(torch::Dtype dtype);

// A float as printed in error messages: shortest round-trip form.
std::string FloatString(float v);

// "0x" and 16 hex digits: a schema fingerprint as error messages print it.
std::string Hex64(uint64_t v);

// Empty string when `name` may travel, else why not.
std::string CheckName(const std::string& name);

// What a header says about its payload, validated.
struct Layout {
  std::vector<int64_t> shape;
  int64_t numel = 0;
  torch::Dtype dtype = torch::kFloat32;  // the header's wire dtype
  bool quantized = false;
  bool masked = false;     // CODEC_MASKED: int32 words
  int bits = 0;            // CODEC_QUANTIZED
  int64_t block_size = 0;  // CODEC_QUANTIZED
  uint64_t bytes = 0;      // the exact payload length

  // The dtype DecodeTensor returns (before any output_dtype).
  torch::Dtype decoded_dtype() const {
    return masked ? torch::kInt32 : quantized ? torch::kFloat32 : dtype;
  }
};

// Checks everything in `header` but its name, index and schema: dtype,
// codec, bits, block_size, shape (at most `max_elements` elements) and that
// encoded_bytes is exactly what the rest implies. Errors name `subject`.
Status CheckLayout(const proto::TensorHeader& header,
                   const std::string& subject, int64_t max_elements,
                   Layout* layout);

// ---- codec_quantized.cc: CODEC_QUANTIZED ----------------------------------

// True for the bit widths CODEC_QUANTIZED carries: 2, 4 and 8.
bool ValidBits(int64_t bits);

// Exact payload bytes of a quantized tensor; nullopt when it overflows
// uint64. REQUIRES: numel >= 0, ValidBits(bits), block_size >= 1.
std::optional<uint64_t> QuantizedBytes(int64_t numel, int bits,
                                       int64_t block_size);

// Index of the first element of x[0, n) that is NaN or Inf; n if none.
int64_t FirstNonFinite(const float* x, int64_t n);

// Quantizes x[0, numel) into `payload`: every block's (min, step) as F32,
// then every element's level packed LSB-first, stochastic rounding drawing
// from `rng`. Fails on NaN or Inf (naming the element) or a block whose
// range overflows F32.
// REQUIRES: options.bits is 2, 4 or 8; payload holds
// EncodedPayloadBytes(numel, options) bytes; rng != nullptr.
Status QuantizePayload(const float* x, int64_t numel,
                       const CodecOptions& options, std::mt19937_64* rng,
                       char* payload);

// Checks every block's parameters and the padding bits of a quantized
// payload of `layout.bytes` bytes. Errors name `subject`.
Status CheckQuantized(const char* payload, const Layout& layout,
                      const std::string& subject);

// Decodes a payload CheckQuantized accepted into out[0, layout.numel).
// REQUIRES: layout.quantized.
void DequantizePayload(const char* payload, const Layout& layout, float* out);

// ---- codec_tensor.cc: one tensor -------------------------------------------

// Validates and decodes `payload` (layout.bytes long) into a new tensor of
// layout.shape: F32 for CODEC_QUANTIZED, the wire dtype for CODEC_RAW.
// Nothing is allocated before the payload passed every check.
StatusOr<torch::Tensor> DecodePayload(const char* payload, const Layout& layout,
                                      const std::string& subject);

// ---- codec_schema.cc: tensors by index -------------------------------------

// Sets the header's name, or with `schema` holding the name its 1-based
// index; the stream's first header also carries the schema's fingerprint.
void NameHeader(const std::string& name, const Schema* schema, bool first,
                proto::TensorHeader* header);

}  // namespace internal
}  // namespace transport
}  // namespace fedpeft

#endif  // FEDPEFT_PROTO_CODEC_INTERNAL_H_
