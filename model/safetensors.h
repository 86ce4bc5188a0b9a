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

#include <map>
#include <string>

#include "common/status.h"
#include "model/llama.h"

namespace fedpeft {
namespace model {

struct SafetensorsContents {
  TensorMap tensors;  // dtype as stored (F32, F16, BF16, F64, I64, I32,
                      // I16, I8, U8, BOOL), each tensor owns its memory
  std::map<std::string, std::string> metadata;  // "__metadata__"
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
Status WriteSafetensors(const std::string& path, const TensorMap& tensors,
                        const std::map<std::string, std::string>& metadata = {});

}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_SAFETENSORS_H_
