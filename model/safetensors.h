// Reader and writer of the safetensors format
// (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON {"name": {"dtype", "shape",
// "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the data
// buffer. The reader checks every rule before it allocates: header length
// within the file and a limit, valid JSON object, known dtype, shape entries
// non-negative, data_offsets in bounds, end - begin equal to
// numel * element size, tensors contiguous and non-overlapping, covering the
// whole buffer. Errors name the file and the tensor.
//
// Thread-safety: free functions, no shared state.
#ifndef FEDPEFT_MODEL_SAFETENSORS_H_
#define FEDPEFT_MODEL_SAFETENSORS_H_

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "model/llama.h"

namespace fedpeft {
namespace model {

struct SafetensorsContents {
  TensorMap tensors;  // dtype as stored (F32, F16, BF16, F64, I64, I32,
                      // I16, I8, U8, BOOL), each tensor owns its memory
  std::map<std::string, std::string> metadata;  // "__metadata__"
};

// One tensor as the header describes it, checked against the rules above.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // as stored: "F32", "BF16", ...
  torch::Dtype torch_dtype = torch::kFloat32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data buffer
  uint64_t end = 0;
};

// A validated header: lets loaders check names and shapes before any tensor
// is allocated.
struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by name
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + header length
};

// Largest header accepted (the reference implementation's limit).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Validates the header of a whole file `bytes` (every rule above) without
// copying tensor data.
StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view bytes,
                                                   const std::string& source);

// A new CPU tensor (stored dtype, owns its memory) holding `entry`'s bytes.
// REQUIRES: `header` was parsed from `bytes` and `entry` is one of its
// entries.
torch::Tensor CopySafetensorsEntry(std::string_view bytes,
                                   const SafetensorsHeader& header,
                                   const SafetensorsEntry& entry);

// A read-only memory mapping of a whole regular file (no copy until tensors
// are materialized): how files too big to read into memory (model weights,
// GBs) are read, with no size cap; every size the file's own fields give is
// checked against bytes().size() before anything is allocated from it.
// Directories, FIFOs and devices are refused (InvalidArgument) without
// blocking. The file must not be truncated while mapped (SIGBUS); writers
// replace files by rename (WriteFileAtomic), which keeps the mapped inode
// intact. Non-copyable; unmaps on destruction.
class MappedFile {
 public:
  static StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::string_view bytes() const {
    return std::string_view(static_cast<const char*>(data_), size_);
  }
  const std::string& path() const { return path_; }
  // Drops the pages wholly inside bytes [begin, end) from this process's
  // memory (madvise MADV_DONTNEED; they are read again from the page cache
  // if touched): a loader that has copied a tensor out releases its bytes,
  // so its peak memory is the copies, not the copies plus the file.
  void Release(uint64_t begin, uint64_t end) const;

 private:
  MappedFile(std::string path, void* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  void* data_;
  size_t size_;
};

// Parses an in-memory file; `source` names it in errors.
StatusOr<SafetensorsContents> ParseSafetensors(const std::string& bytes,
                                               const std::string& source);
StatusOr<SafetensorsContents> ReadSafetensors(const std::string& path);

// Serializes contiguous copies of `tensors` (any supported dtype), sorted by
// name, 8-byte aligned header as the reference implementation writes it.
StatusOr<std::string> SerializeSafetensors(
    const TensorMap& tensors,
    const std::map<std::string, std::string>& metadata = {});
// Serializes and writes atomically (see WriteFileAtomic).
Status WriteSafetensors(
    const std::string& path, const TensorMap& tensors,
    const std::map<std::string, std::string>& metadata = {});

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_SAFETENSORS_H_
