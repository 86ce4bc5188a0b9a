#include "proto/tensor_codec.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <utility>

// CODEC_RAW is little-endian and both ends memcpy element bytes; a big-endian
// host would need a byte swap in EncodeTensors and TensorDecoder::AddData.
// CODEC_QUANTIZED block parameters are memcpy'd F32 likewise.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fedpeft's tensor codec assumes a little-endian host"
#endif

namespace fedpeft {
namespace transport {
namespace {

// Bytes of one block's parameters: min and step, F32 each.
constexpr uint64_t kBlockParamBytes = 8;

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

std::string ShapeString(const google::protobuf::RepeatedField<int64_t>& shape) {
  return ShapeString(std::vector<int64_t>(shape.begin(), shape.end()));
}

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

// A float as printed in error messages: shortest round-trip form.
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

// Empty string when `name` may travel, else why not.
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

bool ValidBits(int64_t bits) { return bits == 2 || bits == 4 || bits == 8; }

// Exact payload bytes of a quantized tensor; nullopt when it overflows
// uint64. REQUIRES: numel >= 0, ValidBits(bits), block_size >= 1.
std::optional<uint64_t> QuantizedBytes(int64_t numel, int bits,
                                       int64_t block_size) {
  const uint64_t n = static_cast<uint64_t>(numel);
  const uint64_t b = static_cast<uint64_t>(block_size);
  const uint64_t blocks = n / b + (n % b != 0);
  uint64_t params = 0;
  if (__builtin_mul_overflow(blocks, kBlockParamBytes, &params)) {
    return std::nullopt;
  }
  // ceil(n * bits / 8) without forming n * bits: n / 8 * bits <= n.
  const uint64_t levels = n / 8 * bits + ((n % 8) * bits + 7) / 8;
  uint64_t total = 0;
  if (__builtin_add_overflow(params, levels, &total)) return std::nullopt;
  return total;
}

// ---- header layout ---------------------------------------------------------

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

// ---- quantization kernels --------------------------------------------------

// Index of the first element of x[0, n) that is NaN or Inf; n if none.
int64_t FirstNonFinite(const float* x, int64_t n) {
  constexpr int64_t kStride = 4096;
  for (int64_t start = 0; start < n; start += kStride) {
    const int64_t end = std::min(n, start + kStride);
    bool bad = false;
    for (int64_t i = start; i < end; ++i) {  // branch-free: vectorizes
      bad |= !(std::fabs(x[i]) <= std::numeric_limits<float>::max());
    }
    if (bad) {
      for (int64_t i = start; i < end; ++i) {
        if (!std::isfinite(x[i])) return i;
      }
    }
  }
  return n;
}

// The decoded value of level q: exactly what every decoder computes.
inline float Dequant(float min, float step, uint32_t q) {
  return min + static_cast<float>(q) * step;
}

struct BlockRange {
  float lo;
  float hi;
  bool nan;  // a NaN among the elements (lo and hi skip NaNs)
};

// Min and max of x[0, n), n >= 1, in four independent lanes so the
// comparisons pipeline.
BlockRange RangeOf(const float* x, int64_t n) {
  float lo[4] = {x[0], x[0], x[0], x[0]};
  float hi[4] = {x[0], x[0], x[0], x[0]};
  bool nan[4] = {false, false, false, false};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const float v = x[i + k];
      lo[k] = v < lo[k] ? v : lo[k];
      hi[k] = v > hi[k] ? v : hi[k];
      nan[k] |= v != v;
    }
  }
  for (; i < n; ++i) {
    lo[0] = x[i] < lo[0] ? x[i] : lo[0];
    hi[0] = x[i] > hi[0] ? x[i] : hi[0];
    nan[0] |= x[i] != x[i];
  }
  BlockRange r{lo[0], hi[0], nan[0]};
  for (int k = 1; k < 4; ++k) {
    r.lo = lo[k] < r.lo ? lo[k] : r.lo;
    r.hi = hi[k] > r.hi ? hi[k] : r.hi;
    r.nan |= nan[k];
  }
  // x[0] seeds every lane: a NaN there is in lo and hi, not in the flags.
  r.nan |= x[0] != x[0];
  return r;
}

// Packs kBits-wide levels LSB-first, eight bytes at a time.
template <int kBits>
class BitWriter {
 public:
  explicit BitWriter(uint8_t* out) : out_(out) {}
  void Put(uint32_t q) {
    acc_ |= static_cast<uint64_t>(q) << used_;
    used_ += kBits;
    if (used_ == 64) {
      std::memcpy(out_, &acc_, 8);
      out_ += 8;
      acc_ = 0;
      used_ = 0;
    }
  }
  // Writes the last partial word's bytes (padding bits stay zero).
  void Flush() {
    const int bytes = (used_ + 7) / 8;
    std::memcpy(out_, &acc_, static_cast<size_t>(bytes));
  }

 private:
  uint8_t* out_;
  uint64_t acc_ = 0;
  int used_ = 0;
};

// Quantizes x[0, numel) into `params` (min, step per block) and `levels`
// (packed LSB-first, ceil(numel * kBits / 8) bytes). Level q = floor(t) +
// Bernoulli(t - floor(t)) with t = (x - min) / step computed in double as
// the fixed-point t * 2^32, whose low 32 bits (the fraction) are compared
// with a uniform 32-bit draw: E[q] = t to 2^-32, so the decoded value is
// unbiased up to float rounding. Two draws come from each 64-bit output of
// `rng`. Fails on NaN or Inf (naming the element) or a block whose range
// overflows F32.
template <int kBits>
Status QuantizeBlocks(const float* x, int64_t numel, int64_t block_size,
                      std::mt19937_64* rng, char* params, uint8_t* levels) {
  constexpr uint32_t kMaxLevel = (1u << kBits) - 1;
  BitWriter<kBits> writer(levels);
  std::vector<uint64_t> draws(static_cast<size_t>(block_size + 1) / 2);
  for (int64_t start = 0, block = 0; start < numel;
       start += block_size, ++block) {
    const int64_t end = std::min(numel, start + block_size);
    const BlockRange range_of_block = RangeOf(x + start, end - start);
    const float lo = range_of_block.lo;
    const float hi = range_of_block.hi;
    if (range_of_block.nan || !std::isfinite(lo) || !std::isfinite(hi)) {
      const int64_t bad = start + FirstNonFinite(x + start, end - start);
      return Status::InvalidArgument(
          "element " + std::to_string(bad) + " is " + FloatString(x[bad]) +
          " (as F32; expected finite values: did training diverge?)");
    }
    float step = 0.0f;
    if (hi > lo) {
      const double range = static_cast<double>(hi) - static_cast<double>(lo);
      step = static_cast<float>(range / kMaxLevel);
      // Round the step up so that t <= kMaxLevel for every element: the
      // clamp below then only absorbs double rounding.
      if (static_cast<double>(step) * kMaxLevel < range) {
        step = std::nextafter(step, std::numeric_limits<float>::infinity());
      }
      if (!std::isfinite(Dequant(lo, step, kMaxLevel))) {
        return Status::InvalidArgument(
            "block " + std::to_string(block) + " spans [" + FloatString(lo) +
            ", " + FloatString(hi) +
            "], beyond what F32 min + level x step can hold (send it with "
            "bits 32)");
      }
    }
    const float block_params[2] = {lo, step};
    std::memcpy(params + block * kBlockParamBytes, block_params,
                kBlockParamBytes);
    if (step == 0.0f) {  // every element is lo: level 0
      for (int64_t i = start; i < end; ++i) writer.Put(0);
      continue;
    }
    const int64_t n = end - start;
    for (int64_t k = 0; k < (n + 1) / 2; ++k) draws[k] = (*rng)();
    const double scale = 0x1p32 / static_cast<double>(step);
    const double base = lo;
    for (int64_t j = 0; j < n; ++j) {
      // t * 2^32 <= (kMaxLevel + tiny) * 2^32 < 2^41: exact in int64.
      const uint64_t fixed = static_cast<uint64_t>(static_cast<int64_t>(
          (static_cast<double>(x[start + j]) - base) * scale));
      const uint32_t u = static_cast<uint32_t>(draws[j >> 1] >> (32 * (j & 1)));
      const uint32_t q = static_cast<uint32_t>(fixed >> 32) +
                         (u < static_cast<uint32_t>(fixed) ? 1u : 0u);
      writer.Put(std::min(q, kMaxLevel));
    }
  }
  writer.Flush();
  return Status::Ok();
}

// Checks every block's parameters and the padding bits of a quantized
// payload of `layout.bytes` bytes. Errors name `subject`.
Status CheckQuantized(const char* payload, const Layout& layout,
                      const std::string& subject) {
  const uint32_t max_level = (1u << layout.bits) - 1;
  const int64_t blocks =
      (layout.numel + layout.block_size - 1) / layout.block_size;
  for (int64_t b = 0; b < blocks; ++b) {
    float min, step;
    std::memcpy(&min, payload + b * kBlockParamBytes, sizeof(float));
    std::memcpy(&step, payload + b * kBlockParamBytes + 4, sizeof(float));
    const std::string block = subject + ": block " + std::to_string(b) +
                              " of " + std::to_string(blocks);
    if (!std::isfinite(min)) {
      return Status::InvalidArgument(block + " has min " + FloatString(min) +
                                     " (expected a finite F32)");
    }
    if (!std::isfinite(step) || !(step >= 0.0f)) {
      return Status::InvalidArgument(block + " has step " + FloatString(step) +
                                     " (expected a finite F32 >= 0)");
    }
    if (!std::isfinite(Dequant(min, step, max_level))) {
      return Status::InvalidArgument(
          block + " has min " + FloatString(min) + " + " +
          std::to_string(max_level) + " x step " + FloatString(step) +
          " overflowing F32 (expected every level to decode to a finite "
          "value)");
    }
  }
  const uint64_t level_bits = static_cast<uint64_t>(layout.numel) * layout.bits;
  if (level_bits % 8 != 0) {
    const uint8_t last = static_cast<uint8_t>(payload[layout.bytes - 1]);
    const uint8_t padding = static_cast<uint8_t>(last >> (level_bits % 8));
    if (padding != 0) {
      return Status::InvalidArgument(
          subject + ": last byte 0x" +
          [](unsigned v) {
            const char* hex = "0123456789abcdef";
            return std::string{hex[v >> 4], hex[v & 15]};
          }(last) +
          " has nonzero padding bits above bit " +
          std::to_string(level_bits % 8) + " (expected zero padding)");
    }
  }
  return Status::Ok();
}

// Decodes a payload CheckQuantized accepted into out[0, numel).
template <int kBits>
void DequantizeBlocks(const char* payload, const Layout& layout, float* out) {
  constexpr uint32_t kMask = (1u << kBits) - 1;
  const int64_t blocks =
      (layout.numel + layout.block_size - 1) / layout.block_size;
  const uint8_t* levels =
      reinterpret_cast<const uint8_t*>(payload) + blocks * kBlockParamBytes;
  for (int64_t b = 0; b < blocks; ++b) {
    float min, step;
    std::memcpy(&min, payload + b * kBlockParamBytes, sizeof(float));
    std::memcpy(&step, payload + b * kBlockParamBytes + 4, sizeof(float));
    const int64_t start = b * layout.block_size;
    const int64_t end = std::min(layout.numel, start + layout.block_size);
    for (int64_t i = start; i < end; ++i) {
      const uint64_t bit = static_cast<uint64_t>(i) * kBits;
      const uint32_t q = (levels[bit >> 3] >> (bit & 7)) & kMask;
      out[i] = Dequant(min, step, q);
    }
  }
}

// Validates and decodes `payload` (layout.bytes long) into a new tensor of
// layout.shape: F32 for CODEC_QUANTIZED, the wire dtype for CODEC_RAW.
// Nothing is allocated before the payload passed every check.
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
  switch (layout.bits) {
    case 2:
      DequantizeBlocks<2>(payload, layout, dst);
      break;
    case 4:
      DequantizeBlocks<4>(payload, layout, dst);
      break;
    default:
      DequantizeBlocks<8>(payload, layout, dst);
      break;
  }
  return out;
}

// Converts `t` to `dtype` when it differs (a copy), else aliases it.
StatusOr<torch::Tensor> ConvertTo(torch::Tensor t, torch::Dtype dtype,
                                  const std::string& subject) {
  if (t.scalar_type() == dtype) return t;
  try {
    return t.to(dtype);
  } catch (const c10::Error& e) {
    return Status::Internal(subject + ": converting to " +
                            TorchDTypeName(dtype) + ": " +
                            e.what_without_backtrace());
  }
}

// Sets the header's name, or with `schema` holding the name its 1-based
// index; the stream's first header also carries the schema's fingerprint.
void NameHeader(const std::string& name, const Schema* schema, bool first,
                proto::TensorHeader* header) {
  header->clear_name();
  header->clear_index();
  header->clear_schema();
  if (schema != nullptr) {
    if (first) header->set_schema(schema->fingerprint);
    auto it =
        std::lower_bound(schema->names.begin(), schema->names.end(), name);
    if (it != schema->names.end() && *it == name) {
      header->set_index(static_cast<uint32_t>(it - schema->names.begin() + 1));
      return;
    }
  }
  header->set_name(name);
}

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

// ---- encodings -------------------------------------------------------------

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
    char* params = wire.payload.data();
    const int64_t blocks =
        (numel + options.block_size - 1) / options.block_size;
    uint8_t* levels =
        reinterpret_cast<uint8_t*>(params + blocks * kBlockParamBytes);
    Status s;
    switch (options.bits) {
      case 2:
        s = QuantizeBlocks<2>(x, numel, options.block_size, rng, params,
                              levels);
        break;
      case 4:
        s = QuantizeBlocks<4>(x, numel, options.block_size, rng, params,
                              levels);
        break;
      default:
        s = QuantizeBlocks<8>(x, numel, options.block_size, rng, params,
                              levels);
        break;
    }
    RETURN_IF_ERROR(s);
  } catch (const c10::Error& e) {
    return Status::Internal(std::string("encoding a tensor: ") +
                            e.what_without_backtrace());
  }
  return wire;
}

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

Schema Schema::Of(const std::vector<std::string>& names) {
  Schema schema;
  schema.names = names;
  std::sort(schema.names.begin(), schema.names.end());
  schema.names.erase(std::unique(schema.names.begin(), schema.names.end()),
                     schema.names.end());
  uint64_t h = 14695981039346656037ull;  // FNV-1a 64 offset basis
  auto mix = [&h](unsigned char c) {
    h ^= c;
    h *= 1099511628211ull;  // FNV-1a 64 prime
  };
  for (size_t i = 0; i < schema.names.size(); ++i) {
    if (i > 0) mix('\n');
    for (char c : schema.names[i]) mix(static_cast<unsigned char>(c));
  }
  schema.fingerprint = h;
  return schema;
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

std::map<std::string, TensorSpec> SpecsOf(const TensorMap& tensors) {
  std::map<std::string, TensorSpec> specs;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) continue;
    specs[name] = TensorSpec{t.sizes().vec(), t.scalar_type()};
  }
  return specs;
}

// ---- TensorDecoder ---------------------------------------------------------

TensorDecoder::TensorDecoder(DecoderLimits limits)
    : limits_(std::move(limits)),
      schema_(limits_.expected ? Schema::OfKeys(*limits_.expected) : Schema()) {
}

Status TensorDecoder::Fail(Status status) {
  error_ = status;
  open_ = false;
  open_tensor_ = torch::Tensor();
  open_payload_ = std::string();
  tensors_.clear();
  return status;
}

Status TensorDecoder::CloseOpenTensor() {
  const std::string subject = "tensor '" + open_name_ + "'";
  torch::Tensor t;
  if (open_header_.codec() == proto::CODEC_QUANTIZED) {
    // The header passed CheckLayout when it came; this recomputes the layout.
    Layout layout;
    Status s = CheckLayout(open_header_, subject,
                           limits_.max_elements_per_tensor, &layout);
    if (!s.ok()) return Fail(s);
    StatusOr<torch::Tensor> decoded =
        DecodePayload(open_payload_.data(), layout, subject);
    open_payload_ = std::string();
    if (!decoded.ok()) return Fail(decoded.status());
    t = std::move(decoded).value();
  } else {
    t = std::move(open_tensor_);
  }
  if (limits_.output_dtype && open_header_.codec() != proto::CODEC_MASKED) {
    StatusOr<torch::Tensor> converted =
        ConvertTo(std::move(t), *limits_.output_dtype, subject);
    if (!converted.ok()) return Fail(converted.status());
    t = std::move(converted).value();
  }
  tensors_.emplace(std::move(open_name_), std::move(t));
  open_name_.clear();
  open_tensor_ = torch::Tensor();
  open_ = false;
  return Status::Ok();
}

Status TensorDecoder::Add(const proto::TensorChunk& chunk) {
  if (!error_.ok()) return error_;
  if (finished_) {
    return Status::FailedPrecondition("tensor chunk after Finish()");
  }
  ++chunks_;
  switch (chunk.part_case()) {
    case proto::TensorChunk::kHeader:
      return AddHeader(chunk.header());
    case proto::TensorChunk::kData:
      return AddData(chunk.data().data());
    default:
      return Fail(Status::InvalidArgument(
          "tensor chunk " + std::to_string(chunks_) +
          ": neither header nor data set (expected one of them)"));
  }
}

Status TensorDecoder::AddHeader(const proto::TensorHeader& header) {
  const size_t header_number = tensors_received() + 1;
  const std::string where = "tensor header " + std::to_string(header_number);
  if (header_number == 1) {
    stream_schema_ = header.schema();
  } else if (header.schema() != 0) {
    return Fail(Status::InvalidArgument(
        where + ": schema fingerprint " + Hex64(header.schema()) +
        " (expected it on the stream's first header only)"));
  }

  // The name, given or by index into the expected tensors' sorted names.
  std::string name = header.name();
  if (header.index() != 0) {
    const uint32_t index = header.index();
    if (!name.empty()) {
      return Fail(Status::InvalidArgument(
          where + ": both name '" + name.substr(0, 64) + "' and index " +
          std::to_string(index) + " set (expected one of them)"));
    }
    if (!limits_.expected) {
      return Fail(Status::InvalidArgument(
          where + ": tensor index " + std::to_string(index) +
          " but this decoder has no expected tensors to index (expected "
          "names)"));
    }
    if (stream_schema_ != schema_.fingerprint) {
      return Fail(Status::InvalidArgument(
          "tensor index " + std::to_string(index) +
          " but the stream's schema fingerprint " + Hex64(stream_schema_) +
          " differs from ours " + Hex64(schema_.fingerprint) +
          " (the two ends hold different adapters)"));
    }
    if (index > schema_.names.size()) {
      return Fail(Status::InvalidArgument(
          where + ": tensor index " + std::to_string(index) +
          " out of range (expected 1 to " +
          std::to_string(schema_.names.size()) + ", the expected tensors)"));
    }
    name = schema_.names[index - 1];
  }

  std::string bad = CheckName(name);
  if (!bad.empty()) {
    return Fail(Status::InvalidArgument(where + ": " + bad));
  }
  const std::string subject = "tensor '" + name + "'";
  if (open_) {
    return Fail(Status::InvalidArgument(
        subject + ": header arrived while '" + open_name_ + "' had " +
        std::to_string(open_received_) + " of its " +
        std::to_string(open_expected_) + " bytes (expected the rest first)"));
  }
  if (tensors_.count(name)) {
    return Fail(Status::InvalidArgument(subject +
                                        ": sent twice (names must be unique)"));
  }
  if (tensors_.size() + 1 > limits_.max_tensors) {
    return Fail(Status::InvalidArgument(
        subject + ": tensor " + std::to_string(tensors_.size() + 1) +
        " of the stream, more than max_tensors " +
        std::to_string(limits_.max_tensors)));
  }

  Layout layout;
  Status s =
      CheckLayout(header, subject, limits_.max_elements_per_tensor, &layout);
  if (!s.ok()) return Fail(s);
  if (layout.masked != limits_.masked) {
    return Fail(Status::InvalidArgument(
        subject +
        (limits_.masked
             ? ": codec " + std::to_string(header.codec()) +
                   " in a secure-aggregation upload (expected CODEC_MASKED=2)"
             : std::string(": CODEC_MASKED outside a secure-aggregation "
                           "upload (expected values)"))));
  }
  const uint64_t nbytes = layout.bytes;
  if (nbytes > limits_.max_total_bytes -
                   std::min(declared_bytes_, limits_.max_total_bytes)) {
    return Fail(
        Status::InvalidArgument(subject + ": " + std::to_string(nbytes) +
                                " bytes would bring the "
                                "stream to " +
                                std::to_string(declared_bytes_ + nbytes) +
                                " bytes, more than max_total_bytes " +
                                std::to_string(limits_.max_total_bytes)));
  }

  if (limits_.expected) {
    auto it = limits_.expected->find(name);
    if (it == limits_.expected->end()) {
      return Fail(Status::InvalidArgument(
          subject + ": not an expected tensor (" +
          std::to_string(limits_.expected->size()) +
          " expected; maybe a different adapter config or base model?)"));
    }
    const TensorSpec& spec = it->second;
    if (layout.shape != spec.shape) {
      return Fail(Status::InvalidArgument(
          subject + ": shape " + ShapeString(layout.shape) + ", expected " +
          ShapeString(spec.shape) +
          " (maybe a different LoRA rank or base model?)"));
    }
    if (spec.dtype && !layout.masked) {
      if (limits_.output_dtype) {
        if (*spec.dtype != *limits_.output_dtype) {
          return Fail(Status::InvalidArgument(
              subject + ": decodes to output_dtype " +
              TorchDTypeName(*limits_.output_dtype) + ", expected " +
              TorchDTypeName(*spec.dtype)));
        }
      } else if (layout.quantized) {
        if (*spec.dtype != torch::kFloat32) {
          return Fail(Status::InvalidArgument(
              subject + ": CODEC_QUANTIZED decodes to F32, expected " +
              TorchDTypeName(*spec.dtype) + " (set output_dtype to convert)"));
        }
      } else if (*spec.dtype != layout.dtype) {
        return Fail(Status::InvalidArgument(
            subject + ": dtype " + DTypeName(header.dtype()) + ", expected " +
            TorchDTypeName(*spec.dtype)));
      }
    }
  }

  // Validated: now allocate, bounded by max_total_bytes. A quantized tensor
  // is buffered and decoded when complete.
  open_header_ = header;
  try {
    if (layout.quantized) {
      open_tensor_ = torch::Tensor();
      open_payload_.clear();
      open_payload_.reserve(nbytes);
    } else {
      open_tensor_ = torch::empty(
          layout.shape, torch::TensorOptions().dtype(layout.decoded_dtype()));
    }
  } catch (const std::exception& e) {  // c10::Error, std::bad_alloc
    return Fail(Status::Internal(subject + ": allocating " +
                                 std::to_string(nbytes) +
                                 " bytes: " + e.what()));
  }
  declared_bytes_ += nbytes;
  open_name_ = name;
  open_expected_ = nbytes;
  open_received_ = 0;
  open_ = true;
  last_name_ = name;
  if (nbytes == 0) return CloseOpenTensor();
  return Status::Ok();
}

Status TensorDecoder::AddData(const std::string& data) {
  if (!open_) {
    if (last_name_.empty()) {
      return Fail(Status::InvalidArgument(
          "tensor chunk " + std::to_string(chunks_) + ": " +
          std::to_string(data.size()) +
          " data bytes before any tensor header (expected a header first)"));
    }
    return Fail(Status::InvalidArgument(
        "tensor '" + last_name_ + "': " + std::to_string(data.size()) +
        " bytes beyond its encoded_bytes " + std::to_string(open_expected_) +
        " (expected the next header)"));
  }
  if (data.empty()) {
    return Fail(Status::InvalidArgument(
        "tensor '" + open_name_ + "': empty data chunk at byte " +
        std::to_string(open_received_) + " (chunks carry >= 1 byte)"));
  }
  if (data.size() > open_expected_ - open_received_) {
    return Fail(Status::InvalidArgument(
        "tensor '" + open_name_ +
        "': " + std::to_string(open_received_ + data.size()) +
        " bytes received, beyond its encoded_bytes " +
        std::to_string(open_expected_)));
  }
  if (open_tensor_.defined()) {
    std::memcpy(static_cast<char*>(open_tensor_.data_ptr()) + open_received_,
                data.data(), data.size());
  } else {
    open_payload_.append(data);
  }
  open_received_ += data.size();
  bytes_ += data.size();
  if (open_received_ == open_expected_) return CloseOpenTensor();
  return Status::Ok();
}

StatusOr<TensorMap> TensorDecoder::Finish() {
  if (!error_.ok()) return error_;
  if (finished_) {
    return Status::FailedPrecondition("TensorDecoder::Finish called twice");
  }
  if (open_) {
    return Fail(Status::InvalidArgument(
        "tensor '" + open_name_ + "': stream ended after " +
        std::to_string(open_received_) + " of its " +
        std::to_string(open_expected_) + " bytes"));
  }
  if (limits_.expected && limits_.require_all_expected) {
    std::vector<std::string> missing;
    for (const auto& [name, spec] : *limits_.expected) {
      if (!tensors_.count(name)) missing.push_back(name);
    }
    if (!missing.empty()) {
      std::string list;
      for (size_t i = 0; i < missing.size() && i < 3; ++i) {
        list += (i ? ", '" : "'") + missing[i] + "'";
      }
      if (missing.size() > 3) list += ", ...";
      return Fail(Status::InvalidArgument(
          "tensor stream: " + std::to_string(missing.size()) + " of " +
          std::to_string(limits_.expected->size()) +
          " expected tensors missing: " + list + " (got " +
          std::to_string(tensors_.size()) + ")"));
    }
  }
  finished_ = true;
  return std::move(tensors_);
}

}  // namespace transport
}  // namespace fedpeft
