// CODEC_MASKED: secure aggregation's masked words (security/secagg.h) on the
// wire, little-endian int32 under an F32 dtype. A masked header is checked by
// CheckLayout (codec_layout.cc), its payload copied as raw bytes by
// DecodePayload (codec_tensor.cc), and a decoder accepts it only when its
// limits say `masked`.
#include <cstdint>
#include <vector>

#include "proto/codec_internal.h"  // the little-endian host check
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace transport {

WireTensor EncodeMaskedWords(const std::vector<int64_t>& shape,
                             const uint32_t* words, size_t count) {
  WireTensor wire;
  wire.header.set_dtype(proto::DTYPE_F32);
  for (int64_t d : shape) wire.header.add_shape(d);
  wire.header.set_codec(proto::CODEC_MASKED);
  wire.header.set_encoded_bytes(count * sizeof(uint32_t));
  wire.payload.assign(reinterpret_cast<const char*>(words),
                      count * sizeof(uint32_t));
  return wire;
}

}  // namespace transport
}  // namespace fedpeft
