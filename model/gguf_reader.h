// A reader of GGUF files (version 2 and 3, little-endian; see
// model/gguf_writer.h for the layout): the metadata, the tensor infos, and
// tensors of types F32, F16 and Q8_0 as float32.
//
// Untrusted input: every count, length, dim and offset is checked against the
// bytes that remain before anything is allocated from it, and a bad file
// gives one Corruption naming the source, the key or tensor, what was found
// and what was expected. Tensor types other than F32/F16/Q8_0 parse (their
// infos are listed) but ReadTensor refuses them (Unimplemented).
//
// Ownership: the reader aliases `bytes` (a MappedFile's, typically), which
// must outlive it; ReadTensor returns fresh tensors.
//
// Thread-safety: const methods may be called from many threads.
#ifndef FEDPEFT_MODEL_GGUF_READER_H_
#define FEDPEFT_MODEL_GGUF_READER_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "model/gguf_writer.h"

namespace fedpeft {
namespace model {

// Most metadata keys and tensors a file may declare, and the longest key,
// string or array accepted: far above real files (a 150k-token vocabulary
// is one array), low enough that a forged count cannot reserve GBs.
inline constexpr uint64_t kGgufMaxKeys = 1 << 16;
inline constexpr uint64_t kGgufMaxTensors = 1 << 20;
inline constexpr uint64_t kGgufMaxArray = 1 << 24;

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // innermost first, as in the file
  uint32_t type = 0;        // ggml_type; F32/F16/Q8_0 are readable
  uint64_t offset = 0;      // from the start of the data section
  // The torch shape: ne reversed.
  std::vector<int64_t> Shape() const;
  int64_t numel() const;
};

// One metadata value. Integers, floats and bools are held in `number`
// (exactly for every integer up to 2^53, which covers every id and size);
// strings in `text`; arrays in `numbers` or `texts` with `element` set.
struct GgufValue {
  GgufValueType type = GgufValueType::kUint32;
  GgufValueType element = GgufValueType::kUint32;  // arrays only
  double number = 0;
  std::string text;
  std::vector<double> numbers;
  std::vector<std::string> texts;
};

class GgufReader {
 public:
  // Parses the header, metadata and tensor infos of `bytes` (aliased) and
  // checks that every tensor lies inside the file, aligned. `source` names
  // the file in errors.
  static StatusOr<GgufReader> Parse(std::string_view bytes, std::string source);

  uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const GgufTensorInfo* FindTensor(const std::string& name) const;

  // Typed metadata lookups: Corruption naming the key when it is absent or
  // of another type (an integer accepts any integer type and
  // checks the range; a float accepts F32/F64).
  StatusOr<std::string> GetString(const std::string& key) const;
  StatusOr<int64_t> GetInt(const std::string& key, int64_t min,
                           int64_t max) const;
  StatusOr<double> GetFloat(const std::string& key) const;
  StatusOr<bool> GetBool(const std::string& key) const;
  StatusOr<std::vector<std::string>> GetStringArray(
      const std::string& key) const;
  StatusOr<std::vector<double>> GetNumberArray(const std::string& key) const;

  // The tensor as float32 with its torch shape (a fresh copy; Q8_0 and F16
  // dequantized). Unimplemented naming the tensor and its type for other
  // types.
  StatusOr<torch::Tensor> ReadTensor(const GgufTensorInfo& info) const;

  const std::string& source() const { return source_; }

 private:
  GgufReader() = default;
  std::string source_;
  std::string_view bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kGgufAlignment;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
};

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_GGUF_READER_H_
