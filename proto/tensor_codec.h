// Tensor streams: conversion between a TensorMap and the sequence of
// proto::TensorChunk messages that carries it over gRPC (DownloadAdapter's
// reply stream, the chunks of UploadUpdate).
//
// Wire format (proto/fedpeft.proto): for each tensor, in name order, one
// TensorHeader {name, dtype, shape, codec, encoded_bytes}, then the tensor's
// bytes in TensorData chunks of at most `chunk_bytes` each. With CODEC_RAW the
// bytes are the elements in row-major order, each in the dtype's
// little-endian representation. A tensor with no elements is a header alone.
//
// Only F32, F16 and BF16 travel; convert other dtypes before encoding.
//
// The decoder trusts nothing it receives: every header is checked against the
// decoder's limits (and the expected names and shapes, when given) before any
// memory is allocated for it, so a buggy or hostile peer gets a rejected RPC
// whose message names the tensor, the value got and the value expected —
// never a crash or an allocation it chose.
//
// Thread-safety: EncodeTensors is reentrant. A TensorDecoder is used by one
// thread at a time (typically the gRPC handler thread reading one stream).
#ifndef FEDPEFT_PROTO_TENSOR_CODEC_H_
#define FEDPEFT_PROTO_TENSOR_CODEC_H_

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/llama.h"  // TensorMap
#include "proto/fedpeft.pb.h"

namespace fedpeft {
namespace transport {

// Longest tensor name accepted on the wire (PEFT keys are ~70 characters).
inline constexpr size_t kMaxTensorNameLength = 256;
// Most dimensions a tensor on the wire may have.
inline constexpr int kMaxTensorDims = 8;
// Bytes a message needs beyond its chunk payload: field tags, lengths and, for
// UploadMessage, the enclosing oneof. A header message (name <= 256
// characters, <= 8 dims) also fits in this budget.
inline constexpr size_t kChunkOverheadBytes = 1024;

// The largest chunk_bytes whose messages (TensorChunk, or an UploadMessage
// wrapping one) stay within `max_message_bytes`.
// REQUIRES: max_message_bytes > kChunkOverheadBytes (smaller limits give 1).
size_t ChunkBytesForMessageLimit(size_t max_message_bytes);

// Bytes of tensor payload a TensorMap takes on the wire with CODEC_RAW
// (sum of numel x element size; framing excluded). Tensors of dtypes that
// cannot travel count as their in-memory size.
uint64_t EncodedBytes(const TensorMap& tensors);

// The wire dtype of a torch dtype; DTYPE_UNSPECIFIED for dtypes that cannot
// travel (anything but float32, float16, bfloat16).
proto::DType ToProtoDType(torch::Dtype dtype);
// The torch dtype of a wire dtype; nullopt for DTYPE_UNSPECIFIED and values
// this build does not know.
std::optional<torch::Dtype> FromProtoDType(int dtype);

// Streams `tensors` as TensorChunks, tensors in name order, each as a header
// and then data chunks of at most `chunk_bytes` bytes, calling `write` once per
// message as it goes: at most one tensor copy (when a tensor is not a
// contiguous CPU tensor) and one chunk are held at a time, never the whole
// stream. `write` must not keep a reference to the chunk past its return.
//
// Returns InvalidArgument (before writing anything) when chunk_bytes is 0, a
// tensor is undefined, its dtype cannot travel, or its name could not pass a
// TensorDecoder (empty, longer than kMaxTensorNameLength, non-printable);
// Unavailable when `write` returns false (the stream is broken: the caller
// finishes the RPC to learn why); Internal when LibTorch throws.
Status EncodeTensors(
    const TensorMap& tensors, size_t chunk_bytes,
    const std::function<bool(const proto::TensorChunk&)>& write);

// What a decoder expects of one tensor.
struct TensorSpec {
  std::vector<int64_t> shape;
  // The wire dtype it must have; nullopt = any of F32/F16/BF16.
  std::optional<torch::Dtype> dtype;
};

// Specs (shape and dtype) of every tensor of `tensors`, e.g. the adapter a
// worker or server holds, to check what a peer sends against it.
std::map<std::string, TensorSpec> SpecsOf(const TensorMap& tensors);

// Bounds on what a TensorDecoder accepts. Every limit is checked before the
// memory it guards is allocated.
struct DecoderLimits {
  // Sum of encoded_bytes over the stream. Default 1 GiB.
  uint64_t max_total_bytes = uint64_t{1} << 30;
  // Tensors in the stream. Default 4096 (a rank-r LoRA on every linear of a
  // 32-layer model has 448).
  size_t max_tensors = 4096;
  // Elements of any one tensor. Default 2^28 (1 GiB of F32).
  int64_t max_elements_per_tensor = int64_t{1} << 28;
  // When set, every tensor's name must be a key and its shape (and dtype, if
  // the spec names one) must match. Unset: any names and shapes.
  std::optional<std::map<std::string, TensorSpec>> expected;
  // With `expected`: Finish() also fails when an expected tensor never came.
  bool require_all_expected = true;
};

// Rebuilds a TensorMap from a stream of TensorChunks.
//
//   TensorDecoder decoder(limits);
//   for each chunk received: RETURN_IF_ERROR(decoder.Add(chunk));
//   ASSIGN_OR_RETURN(TensorMap tensors, decoder.Finish());
//
// Every error is InvalidArgument and names the tensor (or the chunk's position
// in the stream), the value got and the value expected. After an error the
// decoder is spent: later calls return the same error.
class TensorDecoder {
 public:
  explicit TensorDecoder(DecoderLimits limits = {});

  TensorDecoder(const TensorDecoder&) = delete;
  TensorDecoder& operator=(const TensorDecoder&) = delete;

  // Takes the next chunk of the stream. A header is validated in full and its
  // tensor allocated (CPU, uninitialized); data is copied into the tensor
  // whose header came last.
  Status Add(const proto::TensorChunk& chunk);

  // Ends the stream: fails when the last tensor is incomplete or (with
  // require_all_expected) an expected tensor is missing. On success returns
  // the tensors, each a CPU tensor owning its memory, and the decoder is
  // spent. Call once.
  StatusOr<TensorMap> Finish();

  // Chunks, tensor headers and payload bytes taken so far.
  uint64_t chunks_received() const { return chunks_; }
  size_t tensors_received() const { return tensors_.size() + (open_ ? 1 : 0); }
  uint64_t bytes_received() const { return bytes_; }

 private:
  Status AddHeader(const proto::TensorHeader& header);
  Status AddData(const std::string& data);
  Status Fail(Status status);  // records `status` as the sticky error
  void CloseOpenTensor();

  const DecoderLimits limits_;
  TensorMap tensors_;  // completed tensors
  bool open_ = false;  // a header came whose bytes are incomplete
  std::string open_name_;
  torch::Tensor open_tensor_;
  uint64_t open_expected_ = 0;  // encoded_bytes of the open (or last) tensor
  uint64_t open_received_ = 0;
  std::string last_name_;        // the tensor whose header came last
  uint64_t declared_bytes_ = 0;  // sum of encoded_bytes of headers so far
  uint64_t bytes_ = 0;
  uint64_t chunks_ = 0;
  Status error_;  // first error; the decoder is spent after it
  bool finished_ = false;
};

}  // namespace transport
}  // namespace fedpeft

#endif  // FEDPEFT_PROTO_TENSOR_CODEC_H_
