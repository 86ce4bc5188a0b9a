// Fuzz target: an upload stream as the coordinator reads it
// (coordinator/service.cc, FederationService::UploadUpdate).
//
// Input: one mode byte, then frames (fuzz_util.h: 3-byte little-endian
// length, then the bytes) each a serialized proto::UploadMessage; the input's
// end ends the stream. Mode bit 0: the decoder expects FuzzAdapterSpecs()
// (names, shapes, and tensors by index); bit 1: require_all_expected;
// bit 2: a secure-aggregation upload (only CODEC_MASKED, int32 words).
#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"
#include "proto/fedpeft.pb.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace fuzz {

int FuzzTensorStream(const uint8_t* data, size_t size) {
  InputReader in(data, size);
  const uint8_t mode = in.Byte();

  // The server's limits, scaled down: a small update budget, output F32.
  transport::DecoderLimits limits;
  limits.max_total_bytes = uint64_t{1} << 20;
  limits.max_tensors = 64;
  if (mode & 1) limits.expected = FuzzAdapterSpecs();
  limits.require_all_expected = (mode & 2) != 0;
  limits.output_dtype = torch::kFloat32;
  limits.masked = (mode & 4) != 0;

  proto::UploadMessage msg;
  std::string_view frame = in.Frame();
  if (!msg.ParseFromArray(frame.data(), static_cast<int>(frame.size())) ||
      !msg.has_header()) {
    return 0;  // the server rejects a stream that does not open with a header
  }
  const proto::UpdateHeader header = msg.header();
  if (header.kind() != proto::UpdateHeader::DELTA &&
      header.kind() != proto::UpdateHeader::ADAPTER) {
    return 0;
  }

  transport::TensorDecoder decoder(limits);
  Status s;
  while (!in.done() && s.ok()) {
    frame = in.Frame();
    if (!msg.ParseFromArray(frame.data(), static_cast<int>(frame.size()))) {
      return 0;  // gRPC would have failed the stream
    }
    if (!msg.has_chunk()) return 0;  // a second header: rejected
    s = decoder.Add(msg.chunk());
    if (!s.ok()) {
      FUZZ_CHECK(s.code() == StatusCode::kInvalidArgument ||
                     s.code() == StatusCode::kInternal,
                 s.ToString());
      FUZZ_CHECK(!s.message().empty(), "an error without a message");
    }
  }
  if (!s.ok()) return 0;
  StatusOr<TensorMap> decoded = decoder.Finish();
  if (!decoded.ok()) {
    FUZZ_CHECK(!decoded.status().message().empty(),
               "an error without a message");
    return 0;
  }

  // What the decoder promises about an accepted stream. (Finite values are
  // not among them: the coordinator checks those after decoding.)
  const TensorMap& tensors = *decoded;
  FUZZ_CHECK(tensors.size() <= limits.max_tensors,
             std::to_string(tensors.size()) + " tensors");
  FUZZ_CHECK(decoder.bytes_received() <= limits.max_total_bytes,
             std::to_string(decoder.bytes_received()) + " bytes");
  if (limits.expected && limits.require_all_expected) {
    FUZZ_CHECK(tensors.size() == limits.expected->size(),
               "missing expected tensors");
  }
  for (const auto& [name, t] : tensors) {
    FUZZ_CHECK(t.defined(), name + " undefined");
    FUZZ_CHECK(t.device().is_cpu(), name + " not on the CPU");
    FUZZ_CHECK(
        t.scalar_type() == (limits.masked ? torch::kInt32 : torch::kFloat32),
        name + " is " + std::string(c10::toString(t.scalar_type())));
    FUZZ_CHECK(t.dim() <= transport::kMaxTensorDims, name + " too many dims");
    FUZZ_CHECK(t.numel() <= limits.max_elements_per_tensor,
               name + " too many elements");
    if (limits.expected) {
      auto it = limits.expected->find(name);
      FUZZ_CHECK(it != limits.expected->end(), name + " not expected");
      FUZZ_CHECK(t.sizes().vec() == it->second.shape, name + " wrong shape");
    }
    // The bytes are readable: a sum touches every element.
    if (t.numel() > 0) (void)t.sum().item<float>();
  }
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
