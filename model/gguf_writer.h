// A writer of GGUF files (version 3), the single-file model format of
// llama.cpp and Ollama: a header, typed key/value metadata, one info record
// per tensor (name, dims, type, offset) and the tensor data, each tensor
// starting on a multiple of the alignment (32 bytes, GGUF's default; the
// file does not set general.alignment). All integers little-endian.
//
// Dims are written in GGML's order, innermost first: a torch tensor
// [rows, cols] becomes ne = {cols, rows}, so a PyTorch [out, in] weight is
// what llama.cpp expects for its matmuls without a transpose.
//
// Tensor types: F32, F16 (IEEE half) and Q8_0 (blocks of 32 values along the
// innermost dim: an F16 scale d = max|x| / 127, then 32 int8 q =
// round-half-away(x / d); the value is d * q).
//
// Ownership: AddTensor encodes the tensor into the writer's own buffer at
// once (the caller's tensor is not kept), so the whole file is held in
// memory until Write. Fine for the models fedpeft trains on a CPU; a 7B model
// in F16 would need 14 GB.
//
// Thread-safety: one thread at a time.
#ifndef FEDPEFT_MODEL_GGUF_WRITER_H_
#define FEDPEFT_MODEL_GGUF_WRITER_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace model {

inline constexpr uint32_t kGgufVersion = 3;
inline constexpr uint64_t kGgufAlignment = 32;
// GGML_MAX_NAME: llama.cpp refuses longer tensor names (63 bytes + NUL).
inline constexpr size_t kGgufMaxTensorName = 63;
// Values per Q8_0 block and bytes per block (F16 scale + 32 int8).
inline constexpr int64_t kQ8_0BlockValues = 32;
inline constexpr int64_t kQ8_0BlockBytes = 34;

// GGML tensor types (ggml.h's enum ggml_type values).
enum class GgufTensorType : uint32_t { kF32 = 0, kF16 = 1, kQ8_0 = 8 };
// "F32", "F16", "Q8_0".
const char* GgufTensorTypeName(GgufTensorType type);
// Bytes of `n` values of `type`. REQUIRES: n % 32 == 0 for Q8_0.
uint64_t GgufTensorBytes(GgufTensorType type, int64_t n);

// GGUF metadata value types (gguf.h's enum gguf_type values).
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// Q8_0 blocks of `n` float values: n / 32 blocks of 34 bytes.
// REQUIRES: n % 32 == 0.
std::string QuantizeQ8_0(const float* x, int64_t n);

class GgufWriter {
 public:
  GgufWriter() = default;
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // Metadata. Keys are written in the order first set; setting a key again
  // replaces its value in place.
  void SetString(const std::string& key, const std::string& value);
  void SetUint32(const std::string& key, uint32_t value);
  void SetInt32(const std::string& key, int32_t value);
  void SetFloat32(const std::string& key, float value);
  void SetBool(const std::string& key, bool value);
  void SetStringArray(const std::string& key,
                      const std::vector<std::string>& values);
  void SetFloat32Array(const std::string& key,
                       const std::vector<float>& values);
  void SetInt32Array(const std::string& key,
                     const std::vector<int32_t>& values);

  // Encodes `tensor` (any floating dtype, any device; 1 to 4 dims) as
  // `type` under `name`. InvalidArgument naming the tensor for a duplicate
  // or over-long name, an empty or non-floating tensor, more than 4 dims, or
  // Q8_0 with an innermost dim not a multiple of 32.
  Status AddTensor(const std::string& name, const torch::Tensor& tensor,
                   GgufTensorType type);

  int64_t num_tensors() const { return static_cast<int64_t>(tensors_.size()); }

  // The whole file.
  std::string Serialize() const;
  // Serialize() written atomically to `path` (IoError naming it).
  Status Write(const std::string& path) const;

 private:
  struct Kv {
    std::string key;
    std::string value;  // type tag and encoded value
  };
  struct TensorEntry {
    std::string name;
    std::vector<int64_t> ne;  // innermost first
    GgufTensorType type;
    std::string data;
  };
  void SetRaw(const std::string& key, std::string typed_value);

  std::vector<Kv> kv_;
  std::vector<TensorEntry> tensors_;
};

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_GGUF_WRITER_H_
