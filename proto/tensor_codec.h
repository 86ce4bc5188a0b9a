// Tensor streams: conversion between a TensorMap and the sequence of
// proto::TensorChunk messages that carries it over gRPC (DownloadAdapter's
// reply stream, the chunks of UploadUpdate).
//
// Wire format (proto/fedpeft.proto): for each tensor, in name order, one
// TensorHeader {name or index, dtype, shape, codec, encoded_bytes, bits,
// block_size}, then the tensor's bytes in TensorData chunks of at most
// `chunk_bytes` each. With CODEC_RAW the bytes are the elements in row-major
// order, each in the dtype's little-endian representation. With
// CODEC_QUANTIZED they are every block's (min, step) as little-endian F32,
// then every element's b-bit level packed LSB-first (see CodecOptions). A
// tensor with no elements is a header alone. With a Schema, tensors both
// ends know travel as their 1-based index and the first header carries the
// schema's fingerprint.
//
// Only F32, F16 and BF16 travel; convert other dtypes before encoding.
//
// The decoder trusts nothing it receives: every header is checked against the
// decoder's limits (and the expected names and shapes, when given) before any
// memory is allocated for it, so a buggy or hostile peer gets a rejected RPC
// whose message names the tensor, the value got and the value expected —
// never a crash or an allocation it chose.
//
// Implemented in proto/codec_*.cc, tensor_stream_writer.cc and
// tensor_decoder.cc; proto/codec_internal.h says which file holds what.
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
#include <random>
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

// ---- encodings -------------------------------------------------------

// How tensors are encoded for the wire (compression.bits / block_size).
struct CodecOptions {
  // 32: F32 raw; 16: F16 raw (lossless for F16 values); 8, 4, 2:
  // CODEC_QUANTIZED, stochastic and unbiased (E[decoded] = value), min-max
  // per block of block_size elements, each element's error below its
  // block's step = (max - min) / (2^bits - 1), variance at most step^2 / 4.
  int bits = 32;
  int64_t block_size = 256;
};

// InvalidArgument naming `context` (e.g. "compression") unless bits is one
// of 32, 16, 8, 4, 2 and block_size is in [1, kMaxBlockSize].
inline constexpr int64_t kMaxBlockSize = int64_t{1} << 20;
Status ValidateCodecOptions(const CodecOptions& options,
                            const std::string& context);

// Payload bytes of a tensor of `numel` elements under `options` (framing
// excluded): numel * 4 or * 2 raw, else 8 * blocks + ceil(numel * bits / 8)
// with blocks = ceil(numel / block_size). 0 when `options` fail
// ValidateCodecOptions or the size overflows uint64.
uint64_t EncodedPayloadBytes(int64_t numel, const CodecOptions& options);

// One tensor encoded for the wire: its header (dtype, shape, codec, bits,
// block_size, encoded_bytes; name and index unset) and its payload bytes.
struct WireTensor {
  proto::TensorHeader header;
  std::string payload;
};
using WireTensors = std::map<std::string, WireTensor>;

// Encodes one floating-point tensor (any device, any float dtype: it is
// converted to F32 or F16 as `options` ask). Stochastic rounding draws from
// `rng` (REQUIRED for bits < 16), two levels per 64-bit draw. InvalidArgument
// for bad options, a non-float tensor, more than kMaxTensorDims dimensions,
// a tensor with NaN or Inf (a block's range would be undefined), values
// beyond the F16 range with bits 16, or a block whose range overflows F32.
// The encoder aims at unbiased values to float precision; what a receiver
// sees exactly is what DecodeTensor returns for the result.
StatusOr<WireTensor> EncodeTensor(const torch::Tensor& tensor,
                                  const CodecOptions& options,
                                  std::mt19937_64* rng);

// Decodes one tensor after validating the header and payload in full:
// lengths, bits, block size, and every block's min and step finite with
// step >= 0 and min + (2^bits - 1) * step finite; nonzero padding bits are
// rejected. Returns a CPU tensor: F32 for CODEC_QUANTIZED, the header's dtype
// for CODEC_RAW. Errors (InvalidArgument) name `name`.
StatusOr<torch::Tensor> DecodeTensor(const WireTensor& wire,
                                     const std::string& name);

// Secure aggregation's masked words (security/secagg.h) for a tensor of
// `shape`: CODEC_MASKED, dtype F32, the words little-endian.
// REQUIRES: words.size() == product of shape.
WireTensor EncodeMaskedWords(const std::vector<int64_t>& shape,
                             const uint32_t* words, size_t count);

// The names both ends of a stream agree on, to send tensors by index
// (TensorHeader.index) instead of by name.
struct Schema {
  std::vector<std::string> names;  // sorted, unique
  uint64_t fingerprint = 0;        // FNV-1a 64 over the names, '\n'-joined
  static Schema Of(const std::vector<std::string>& names);  // sorts
  template <typename Map>
  static Schema OfKeys(const Map& map) {
    std::vector<std::string> names;
    for (const auto& kv : map) names.push_back(kv.first);
    return Of(names);
  }
};

// Streams pre-encoded tensors in name order, like EncodeTensors. With a
// schema, a tensor whose name is in it travels as its index (the first
// header of the stream carries the schema's fingerprint); others by name.
Status WriteTensors(
    const WireTensors& tensors, size_t chunk_bytes, const Schema* schema,
    const std::function<bool(const proto::TensorChunk&)>& write);

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
//
// With options.bits 32 (the default) every tensor travels raw in its own
// dtype (F32, F16 or BF16), streamed as above and not checked for NaN. With
// any other `options` (InvalidArgument if they fail ValidateCodecOptions),
// every tensor is first encoded with EncodeTensor (quantization drawing from
// `rng`, REQUIRED then: InvalidArgument without it), so a NaN or Inf is
// reported, naming the tensor, before anything is written; the encoded
// payloads (at most half the raw size) are held until written. With
// `schema`, tensors travel by index as in WriteTensors.
Status EncodeTensors(
    const TensorMap& tensors, size_t chunk_bytes,
    const std::function<bool(const proto::TensorChunk&)>& write,
    const CodecOptions& options = {}, std::mt19937_64* rng = nullptr,
    const Schema* schema = nullptr);

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
  // Sum of encoded_bytes over the stream. Default 1 GiB. A quantized tensor
  // decodes to up to 16x its encoded bytes (F32 from 2 bits), allocated only
  // once all its bytes arrived and bounded by max_elements_per_tensor.
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
  // Every decoded tensor is converted to this dtype when set (e.g. F32 for
  // an update that may arrive as F16 or quantized). The expected specs'
  // dtypes are then checked against it, not against the wire dtype.
  std::optional<torch::Dtype> output_dtype;
  // A secure-aggregation upload: every tensor must be CODEC_MASKED, and
  // decodes to its int32 words (never converted to output_dtype). Unset,
  // CODEC_MASKED is rejected.
  bool masked = false;
  //
  // Headers may name tensors by index (1-based) into the sorted names of
  // `expected` (Schema::OfKeys(*expected)), whose fingerprint the stream's
  // first header must then carry; index 0 means "by name". Without
  // `expected`, an index is rejected; so is a header with both a name and an
  // index, and a schema fingerprint on any header but the first.
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

  // Takes the next chunk of the stream. A header is validated in full; a
  // CODEC_RAW tensor is then allocated (CPU, uninitialized) and its data
  // copied into it as it comes. A CODEC_QUANTIZED tensor's bytes are
  // buffered (bounded by max_total_bytes) and validated and dequantized when
  // its last byte arrives. Headers may come in any order; a name (or index)
  // may come only once.
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
  // Dequantizes (CODEC_QUANTIZED), converts to output_dtype and files the
  // open tensor.
  Status CloseOpenTensor();

  const DecoderLimits limits_;
  const Schema schema_;  // of limits_.expected (empty without it)
  TensorMap tensors_;    // completed tensors
  bool open_ = false;    // a header came whose bytes are incomplete
  std::string open_name_;
  torch::Tensor open_tensor_;  // CODEC_RAW: receives the bytes in place
  // CODEC_QUANTIZED: the header and the bytes received so far.
  proto::TensorHeader open_header_;
  std::string open_payload_;
  uint64_t stream_schema_ = 0;  // the first header's schema fingerprint
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
