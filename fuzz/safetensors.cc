// Fuzz target: model::ParseSafetensorsHeader and model::ParseSafetensors
// (the whole input is the file).
#include "model/safetensors.h"

#include <string>
#include <string_view>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"

namespace fedpeft {
namespace fuzz {

int FuzzSafetensors(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  StatusOr<model::SafetensorsHeader> header =
      model::ParseSafetensorsHeader(std::string_view(bytes), "fuzz");
  StatusOr<model::SafetensorsContents> contents =
      model::ParseSafetensors(bytes, "fuzz");
  FUZZ_CHECK(header.ok() == contents.ok() ||
                 contents.status().code() == StatusCode::kInternal,
             "header " + header.status().ToString() + " but contents " +
                 contents.status().ToString());
  if (!header.ok()) {
    FUZZ_CHECK(header.status().code() == StatusCode::kCorruption,
               header.status().ToString());
    return 0;
  }

  // The promises of a valid header: entries sorted and unique, each within
  // the buffer and exactly its numel x element size, the buffer covered.
  const uint64_t buffer = size - header->data_start;
  uint64_t covered = 0;
  for (size_t i = 0; i < header->entries.size(); ++i) {
    const model::SafetensorsEntry& e = header->entries[i];
    FUZZ_CHECK(i == 0 || header->entries[i - 1].name < e.name,
               "entries not sorted or not unique at " + e.name);
    FUZZ_CHECK(e.begin <= e.end && e.end <= buffer, e.name + " out of bounds");
    covered += e.end - e.begin;
  }
  FUZZ_CHECK(covered == buffer, "buffer not covered exactly");
  if (!contents.ok()) return 0;  // LibTorch refused a shape (Internal)

  FUZZ_CHECK(contents->tensors.size() == header->entries.size(),
             "tensor count differs from the header's");
  FUZZ_CHECK(contents->metadata == header->metadata, "metadata differs");
  for (const model::SafetensorsEntry& e : header->entries) {
    auto it = contents->tensors.find(e.name);
    FUZZ_CHECK(it != contents->tensors.end(), e.name + " missing");
    const torch::Tensor& t = it->second;
    FUZZ_CHECK(t.scalar_type() == e.torch_dtype, e.name + " wrong dtype");
    FUZZ_CHECK(t.sizes().vec() == e.shape, e.name + " wrong shape");
    FUZZ_CHECK(
        static_cast<uint64_t>(t.numel()) * t.element_size() == e.end - e.begin,
        e.name + " wrong size");
  }
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
