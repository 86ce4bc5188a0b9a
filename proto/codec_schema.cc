// Tensors by index: the Schema both ends of a stream agree on (sorted names
// and their FNV-1a fingerprint), and NameHeader, which names a header by
// index when the schema holds its name. TensorDecoder resolves the indices.
#include <algorithm>
#include <string>
#include <vector>

#include "proto/codec_internal.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace transport {

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

namespace internal {

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

}  // namespace internal
}  // namespace transport
}  // namespace fedpeft
