// The sending side of a tensor stream: WriteTensors (pre-encoded tensors) and
// EncodeTensors (a TensorMap, raw or encoded with EncodeTensor), each as a
// header then data chunks, everything validated before the first write.
#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <utility>

#include "proto/codec_internal.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace transport {

using internal::CheckLayout;
using internal::CheckName;
using internal::Layout;
using internal::NameHeader;

namespace {

// Sends `bytes` [0, n) as data chunks of at most chunk_bytes.
Status WriteData(const char* bytes, uint64_t n, size_t chunk_bytes,
                 const std::string& name, proto::TensorChunk* data_chunk,
                 const std::function<bool(const proto::TensorChunk&)>& write) {
  std::string* data = data_chunk->mutable_data()->mutable_data();
  for (uint64_t offset = 0; offset < n; offset += chunk_bytes) {
    const size_t len =
        static_cast<size_t>(std::min<uint64_t>(chunk_bytes, n - offset));
    data->assign(bytes + offset, len);
    if (!write(*data_chunk)) {
      return Status::Unavailable("tensor stream broken while writing '" + name +
                                 "' at byte " + std::to_string(offset) +
                                 " of " + std::to_string(n));
    }
  }
  return Status::Ok();
}

Status HeaderWriteFailed(const std::string& name) {
  return Status::Unavailable(
      "tensor stream broken while writing the header of '" + name + "'");
}

}  // namespace

size_t ChunkBytesForMessageLimit(size_t max_message_bytes) {
  if (max_message_bytes <= kChunkOverheadBytes) return 1;
  return max_message_bytes - kChunkOverheadBytes;
}

uint64_t EncodedBytes(const TensorMap& tensors) {
  uint64_t total = 0;
  for (const auto& [name, t] : tensors) {
    if (t.defined())
      total += static_cast<uint64_t>(t.numel()) * t.element_size();
  }
  return total;
}

Status WriteTensors(
    const WireTensors& tensors, size_t chunk_bytes, const Schema* schema,
    const std::function<bool(const proto::TensorChunk&)>& write) {
  if (chunk_bytes == 0) {
    return Status::InvalidArgument("chunk_bytes: must be >= 1, got 0");
  }
  // Validate everything before the first write.
  for (const auto& [name, wire] : tensors) {
    std::string bad = CheckName(name);
    if (!bad.empty()) return Status::InvalidArgument("cannot encode " + bad);
    const std::string subject = "tensor '" + name + "'";
    Layout layout;
    RETURN_IF_ERROR(CheckLayout(wire.header, subject,
                                std::numeric_limits<int64_t>::max(), &layout));
    if (wire.payload.size() != layout.bytes) {
      return Status::InvalidArgument(
          subject + ": payload of " + std::to_string(wire.payload.size()) +
          " bytes, expected its encoded_bytes " + std::to_string(layout.bytes));
    }
  }
  proto::TensorChunk header_chunk;
  proto::TensorChunk data_chunk;
  bool first = true;
  for (const auto& [name, wire] : tensors) {
    proto::TensorHeader* header = header_chunk.mutable_header();
    *header = wire.header;
    NameHeader(name, schema, first, header);
    first = false;
    if (!write(header_chunk)) return HeaderWriteFailed(name);
    RETURN_IF_ERROR(WriteData(wire.payload.data(), wire.payload.size(),
                              chunk_bytes, name, &data_chunk, write));
  }
  return Status::Ok();
}

Status EncodeTensors(
    const TensorMap& tensors, size_t chunk_bytes,
    const std::function<bool(const proto::TensorChunk&)>& write,
    const CodecOptions& options, std::mt19937_64* rng, const Schema* schema) {
  if (chunk_bytes == 0) {
    return Status::InvalidArgument("chunk_bytes: must be >= 1, got 0");
  }
  RETURN_IF_ERROR(ValidateCodecOptions(options, "compression"));
  if (options.bits < 16 && rng == nullptr) {
    return Status::InvalidArgument(
        "compression.bits " + std::to_string(options.bits) +
        ": stochastic rounding needs a random generator, got none");
  }
  // Validate everything before the first write, so a bad map never leaves a
  // half-sent stream behind.
  for (const auto& [name, t] : tensors) {
    std::string bad = CheckName(name);
    if (!bad.empty()) {
      return Status::InvalidArgument("cannot encode " + bad);
    }
    if (!t.defined()) {
      return Status::InvalidArgument("tensor '" + name +
                                     "': undefined tensor, cannot encode");
    }
    if (ToProtoDType(t.scalar_type()) == proto::DTYPE_UNSPECIFIED) {
      return Status::InvalidArgument(
          "tensor '" + name + "': dtype " +
          std::string(c10::toString(t.scalar_type())) +
          " cannot travel (expected Float, Half or BFloat16); convert it "
          "before encoding");
    }
    if (t.dim() > kMaxTensorDims) {
      return Status::InvalidArgument(
          "tensor '" + name + "': " + std::to_string(t.dim()) +
          " dimensions, at most " + std::to_string(kMaxTensorDims) + " travel");
    }
  }

  if (options.bits != 32) {
    // Encoded in full first: a NaN is reported before anything is written.
    WireTensors wires;
    for (const auto& [name, t] : tensors) {
      StatusOr<WireTensor> wire = EncodeTensor(t, options, rng);
      if (!wire.ok()) {
        return wire.status().WithContext("tensor '" + name + "'");
      }
      wires.emplace(name, std::move(wire).value());
    }
    return WriteTensors(wires, chunk_bytes, schema, write);
  }

  try {
    proto::TensorChunk header_chunk;
    proto::TensorChunk data_chunk;
    bool first = true;
    for (const auto& [name, tensor] : tensors) {
      // Aliases `tensor` when it already is a contiguous CPU tensor; otherwise
      // a contiguous CPU copy lives for this iteration only.
      const torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
      const uint64_t nbytes =
          static_cast<uint64_t>(t.numel()) * t.element_size();

      proto::TensorHeader* header = header_chunk.mutable_header();
      NameHeader(name, schema, first, header);
      first = false;
      header->set_dtype(ToProtoDType(t.scalar_type()));
      header->clear_shape();
      for (int64_t d : t.sizes()) header->add_shape(d);
      header->set_codec(proto::CODEC_RAW);
      header->set_encoded_bytes(nbytes);
      if (!write(header_chunk)) return HeaderWriteFailed(name);
      RETURN_IF_ERROR(WriteData(static_cast<const char*>(t.data_ptr()), nbytes,
                                chunk_bytes, name, &data_chunk, write));
    }
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("encoding tensors: ") +
                            e.what_without_backtrace());
  }
  return Status::Ok();
}

}  // namespace transport
}  // namespace fedpeft
