// Fuzz target: one tensor through transport::DecodeTensor, and what decodes
// through an EncodeTensor round trip.
//
// Input: a frame (fuzz_util.h) holding a serialized proto::TensorHeader,
// then the payload (the rest of the input).
#include <cstring>
#include <random>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"
#include "proto/fedpeft.pb.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace fuzz {

int FuzzDecodeTensor(const uint8_t* data, size_t size) {
  InputReader in(data, size);
  transport::WireTensor wire;
  std::string_view frame = in.Frame();
  if (!wire.header.ParseFromArray(frame.data(),
                                  static_cast<int>(frame.size()))) {
    return 0;
  }
  wire.payload = std::string(in.Rest());

  StatusOr<torch::Tensor> decoded = transport::DecodeTensor(wire, "fuzz");
  if (!decoded.ok()) {
    FUZZ_CHECK(decoded.status().code() == StatusCode::kInvalidArgument ||
                   decoded.status().code() == StatusCode::kInternal,
               decoded.status().ToString());
    return 0;
  }
  const torch::Tensor& t = *decoded;
  const proto::TensorHeader& h = wire.header;
  const bool quantized = h.codec() == proto::CODEC_QUANTIZED;
  FUZZ_CHECK(t.device().is_cpu(), "decoded off the CPU");
  FUZZ_CHECK(t.sizes().vec() ==
                 std::vector<int64_t>(h.shape().begin(), h.shape().end()),
             "decoded shape differs from the header's");
  FUZZ_CHECK(!quantized || t.scalar_type() == torch::kFloat32,
             "CODEC_QUANTIZED decoded to a non-F32 tensor");
  if (h.codec() == proto::CODEC_MASKED) {
    // Words, not values: they round-trip bit-exactly and nothing else.
    FUZZ_CHECK(t.scalar_type() == torch::kInt32,
               "CODEC_MASKED decoded to a non-int32 tensor");
    const transport::WireTensor again = transport::EncodeMaskedWords(
        t.sizes().vec(), reinterpret_cast<const uint32_t*>(t.data_ptr()),
        static_cast<size_t>(t.numel()));
    FUZZ_CHECK(again.payload == wire.payload,
               "masked round trip changed bytes");
    return 0;
  }
  FUZZ_CHECK(quantized || transport::ToProtoDType(t.scalar_type()) ==
                              static_cast<proto::DType>(h.dtype()),
             "CODEC_RAW decoded to another dtype than the header's");

  // Re-encode at the same bits (F16 raw as 16, F32/BF16 raw as 32). Raw
  // values may be NaN or Inf, which the encoder refuses; anything it
  // accepts must decode again to the same shape.
  transport::CodecOptions options;
  if (quantized) {
    options.bits = static_cast<int>(h.bits());
    options.block_size = h.block_size();
  } else {
    options.bits = h.dtype() == proto::DTYPE_F16 ? 16 : 32;
  }
  std::mt19937_64 rng(1);
  StatusOr<transport::WireTensor> again =
      transport::EncodeTensor(t, options, &rng);
  if (!again.ok()) {
    FUZZ_CHECK(again.status().code() == StatusCode::kInvalidArgument,
               again.status().ToString());
    return 0;
  }
  FUZZ_CHECK(again->payload.size() == again->header.encoded_bytes(),
             "re-encoded payload size differs from its encoded_bytes");
  FUZZ_CHECK(again->payload.size() ==
                 transport::EncodedPayloadBytes(t.numel(), options),
             "re-encoded payload size differs from EncodedPayloadBytes");
  StatusOr<torch::Tensor> redecoded = transport::DecodeTensor(*again, "again");
  FUZZ_CHECK(redecoded.ok(), "the encoder's output does not decode: " +
                                 redecoded.status().ToString());
  FUZZ_CHECK(redecoded->sizes() == t.sizes(), "round trip changed the shape");
  if (!quantized && h.dtype() != proto::DTYPE_BF16) {
    // Raw F32 and F16 travel bit-exactly.
    FUZZ_CHECK(again->payload == wire.payload, "raw round trip changed bytes");
  }
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
