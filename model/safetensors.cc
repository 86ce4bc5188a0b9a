#include "model/safetensors.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "common/file_util.h"
#include "common/json_util.h"
#include "common/text.h"

namespace fedpeft {
namespace model {
namespace {

struct DtypeInfo {
  const char* name;
  torch::Dtype dtype;
  uint64_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", torch::kFloat64, 8}, {"F32", torch::kFloat32, 4},
    {"F16", torch::kFloat16, 2}, {"BF16", torch::kBFloat16, 2},
    {"I64", torch::kInt64, 8},   {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},   {"I8", torch::kInt8, 1},
    {"U8", torch::kUInt8, 1},    {"BOOL", torch::kBool, 1},
};

const DtypeInfo* FindDtype(const std::string& name) {
  for (const DtypeInfo& info : kDtypes) {
    if (name == info.name) return &info;
  }
  return nullptr;
}

const DtypeInfo* FindDtype(torch::Dtype dtype) {
  for (const DtypeInfo& info : kDtypes) {
    if (dtype == info.dtype) return &info;
  }
  return nullptr;
}

std::string AcceptedDtypes() {
  std::string out;
  for (const DtypeInfo& info : kDtypes) {
    if (!out.empty()) out += ", ";
    out += info.name;
  }
  return out;
}

uint64_t ReadLe64(std::string_view bytes) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) {
    v = (v << 8) | static_cast<unsigned char>(bytes[i]);
  }
  return v;
}

void AppendLe64(uint64_t v, std::string* out) {
  for (int i = 0; i < 8; ++i) {
    out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
}

// Parses one non-metadata header entry; `prefix` is "<source>: tensor 'x'".
Status ParseEntry(const std::string& name, const nlohmann::json& j,
                  const std::string& prefix, uint64_t buffer_size,
                  SafetensorsEntry* entry) {
  if (!j.is_object()) {
    return Status::Corruption(prefix + ": header entry is " +
                              std::string(j.type_name()) +
                              ", expected an object with dtype, shape, "
                              "data_offsets");
  }
  entry->name = name;
  auto dtype_it = j.find("dtype");
  if (dtype_it == j.end() || !dtype_it->is_string()) {
    return Status::Corruption(prefix + ": missing or non-string 'dtype'");
  }
  entry->dtype = dtype_it->get<std::string>();
  const DtypeInfo* info = FindDtype(entry->dtype);
  if (info == nullptr) {
    return Status::Corruption(prefix + ": unknown dtype '" + entry->dtype +
                              "' (supported: " + AcceptedDtypes() + ")");
  }
  entry->torch_dtype = info->dtype;

  auto shape_it = j.find("shape");
  if (shape_it == j.end() || !shape_it->is_array()) {
    return Status::Corruption(prefix + ": missing or non-array 'shape'");
  }
  // numel * element size must fit in 64 bits: checked per factor.
  uint64_t nbytes = info->size;
  bool overflow = false;
  entry->shape.clear();
  for (const nlohmann::json& d : *shape_it) {
    if (!d.is_number_unsigned()) {  // negative, fractional, not a number
      return Status::Corruption(prefix + ": shape " + JsonBrief(*shape_it) +
                                " has an entry " + JsonBrief(d) +
                                ", expected non-negative integers");
    }
    uint64_t dim = d.get<uint64_t>();
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return Status::Corruption(prefix + ": shape entry " + JsonBrief(d) +
                                " is too large");
    }
    entry->shape.push_back(static_cast<int64_t>(dim));
    if (dim != 0 && nbytes > std::numeric_limits<uint64_t>::max() / dim) {
      overflow = true;
    }
    nbytes *= dim;
  }

  auto off_it = j.find("data_offsets");
  if (off_it == j.end() || !off_it->is_array() || off_it->size() != 2 ||
      !(*off_it)[0].is_number_unsigned() ||
      !(*off_it)[1].is_number_unsigned()) {
    return Status::Corruption(
        prefix + ": 'data_offsets' is " +
        (off_it == j.end() ? std::string("missing") : JsonBrief(*off_it)) +
        ", expected [begin, end] of non-negative integers");
  }
  entry->begin = (*off_it)[0].get<uint64_t>();
  entry->end = (*off_it)[1].get<uint64_t>();
  if (entry->begin > entry->end || entry->end > buffer_size) {
    return Status::Corruption(
        prefix + ": data_offsets [" + std::to_string(entry->begin) + ", " +
        std::to_string(entry->end) + "] out of bounds of the data buffer of " +
        std::to_string(buffer_size) + " bytes");
  }
  if (overflow || entry->end - entry->begin != nbytes) {
    return Status::Corruption(
        prefix + ": data_offsets [" + std::to_string(entry->begin) + ", " +
        std::to_string(entry->end) + "] span " +
        std::to_string(entry->end - entry->begin) + " bytes, but shape " +
        ShapeString(entry->shape) + " of " + entry->dtype + " needs " +
        (overflow ? std::string("more than 2^64") : std::to_string(nbytes)));
  }
  return Status::Ok();
}

std::string JsonString(const std::string& s) {
  return nlohmann::json(s).dump();
}

}  // namespace

StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view bytes,
                                                   const std::string& source) {
  if (bytes.size() < 8) {
    return Status::Corruption(
        source + ": file is " + std::to_string(bytes.size()) +
        " bytes, shorter than the 8-byte header length; not a safetensors "
        "file");
  }
  const uint64_t header_len = ReadLe64(bytes);
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return Status::Corruption(
        source + ": header length " + std::to_string(header_len) +
        " exceeds the limit of " + std::to_string(kMaxSafetensorsHeaderBytes) +
        " bytes; not a safetensors file?");
  }
  if (header_len > bytes.size() - 8) {
    return Status::Corruption(
        source + ": header length " + std::to_string(header_len) +
        " goes beyond the end of the file (" + std::to_string(bytes.size()) +
        " bytes); truncated file?");
  }
  SafetensorsHeader header;
  header.data_start = 8 + header_len;
  const uint64_t buffer_size = bytes.size() - header.data_start;
  std::string_view text = bytes.substr(8, header_len);

  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(),
                                           /*cb=*/nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return Status::Corruption(source + ": header is not valid JSON");
  }
  if (!j.is_object()) {
    return Status::Corruption(source + ": header is a JSON " +
                              std::string(j.type_name()) +
                              ", expected an object");
  }
  for (const auto& [name, value] : j.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) {
        return Status::Corruption(source + ": __metadata__ is not an object");
      }
      for (const auto& [key, v] : value.items()) {
        if (!v.is_string()) {
          return Status::Corruption(source + ": __metadata__ key '" + key +
                                    "' is " + JsonBrief(v) +
                                    ", expected a string");
        }
        header.metadata[key] = v.get<std::string>();
      }
      continue;
    }
    SafetensorsEntry entry;
    RETURN_IF_ERROR(ParseEntry(name, value, source + ": tensor '" + name + "'",
                               buffer_size, &entry));
    header.entries.push_back(std::move(entry));
  }

  // The data buffer must be covered exactly: sorted by offset, each tensor
  // begins where the previous one ends, the last ends at the buffer's end.
  std::vector<const SafetensorsEntry*> by_offset;
  by_offset.reserve(header.entries.size());
  for (const SafetensorsEntry& e : header.entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
              return std::tie(a->begin, a->end, a->name) <
                     std::tie(b->begin, b->end, b->name);
            });
  uint64_t covered = 0;
  const SafetensorsEntry* previous = nullptr;
  for (const SafetensorsEntry* e : by_offset) {
    if (e->begin < covered) {
      return Status::Corruption(source + ": tensor '" + e->name + "' at [" +
                                std::to_string(e->begin) + ", " +
                                std::to_string(e->end) + "] overlaps tensor '" +
                                previous->name + "' ending at " +
                                std::to_string(covered));
    }
    if (e->begin > covered) {
      return Status::Corruption(source + ": gap of uncovered bytes [" +
                                std::to_string(covered) + ", " +
                                std::to_string(e->begin) + ") before tensor '" +
                                e->name + "'");
    }
    covered = e->end;
    previous = e;
  }
  if (covered != buffer_size) {
    return Status::Corruption(
        source + ": tensors cover " + std::to_string(covered) +
        " bytes of the data buffer, but it has " + std::to_string(buffer_size) +
        " (uncovered trailing bytes)");
  }
  std::sort(header.entries.begin(), header.entries.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return a.name < b.name;
            });
  return header;
}

torch::Tensor CopySafetensorsEntry(std::string_view bytes,
                                   const SafetensorsHeader& header,
                                   const SafetensorsEntry& entry) {
  torch::Tensor t = torch::empty(
      entry.shape, torch::TensorOptions().dtype(entry.torch_dtype));
  if (entry.end > entry.begin) {
    std::memcpy(t.data_ptr(), bytes.data() + header.data_start + entry.begin,
                entry.end - entry.begin);
  }
  return t;
}

StatusOr<SafetensorsContents> ParseSafetensors(const std::string& bytes,
                                               const std::string& source) {
  ASSIGN_OR_RETURN(SafetensorsHeader header,
                   ParseSafetensorsHeader(bytes, source));
  SafetensorsContents contents;
  contents.metadata = std::move(header.metadata);
  try {
    for (const SafetensorsEntry& e : header.entries) {
      contents.tensors[e.name] = CopySafetensorsEntry(bytes, header, e);
    }
  } catch (const std::exception& e) {
    return Status::Internal(source + ": " + e.what());
  }
  return contents;
}

StatusOr<SafetensorsContents> ReadSafetensors(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  ASSIGN_OR_RETURN(SafetensorsHeader header,
                   ParseSafetensorsHeader(file->bytes(), path));
  SafetensorsContents contents;
  contents.metadata = std::move(header.metadata);
  try {
    for (const SafetensorsEntry& e : header.entries) {
      contents.tensors[e.name] = CopySafetensorsEntry(file->bytes(), header, e);
    }
  } catch (const std::exception& e) {
    return Status::Internal(path + ": " + e.what());
  }
  return contents;
}

StatusOr<std::string> SerializeSafetensors(
    const TensorMap& tensors,
    const std::map<std::string, std::string>& metadata) {
  // Header written as the reference implementation does: compact JSON,
  // "__metadata__" first (omitted when empty), keys dtype, shape,
  // data_offsets, padded with spaces to a multiple of 8 bytes.
  std::string json = "{";
  bool first = true;
  if (!metadata.empty()) {
    json += "\"__metadata__\":{";
    for (auto it = metadata.begin(); it != metadata.end(); ++it) {
      if (it != metadata.begin()) json += ",";
      json += JsonString(it->first) + ":" + JsonString(it->second);
    }
    json += "}";
    first = false;
  }
  std::vector<torch::Tensor> contiguous;
  contiguous.reserve(tensors.size());
  uint64_t offset = 0;
  try {
    for (const auto& [name, tensor] : tensors) {
      if (name == "__metadata__") {
        return Status::InvalidArgument(
            "tensor name '__metadata__' is reserved by the safetensors format");
      }
      if (!tensor.defined()) {
        return Status::InvalidArgument("tensor '" + name + "' is undefined");
      }
      const DtypeInfo* info = FindDtype(tensor.scalar_type());
      if (info == nullptr) {
        return Status::InvalidArgument(
            "tensor '" + name + "' has dtype " +
            std::string(c10::toString(tensor.scalar_type())) +
            ", which safetensors cannot store (supported: " + AcceptedDtypes() +
            ")");
      }
      torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
      const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * info->size;
      if (!first) json += ",";
      first = false;
      json +=
          JsonString(name) + ":{\"dtype\":\"" + info->name + "\",\"shape\":[";
      for (int64_t d = 0; d < t.dim(); ++d) {
        if (d > 0) json += ",";
        json += std::to_string(t.size(d));
      }
      json += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + nbytes) + "]}";
      offset += nbytes;
      contiguous.push_back(std::move(t));
    }
  } catch (const std::exception& e) {
    return Status::Internal(std::string("serializing safetensors: ") +
                            e.what());
  }
  json += "}";
  json.append((8 - json.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + json.size() + offset);
  AppendLe64(json.size(), &out);
  out += json;
  for (const torch::Tensor& t : contiguous) {
    out.append(static_cast<const char*>(t.data_ptr()),
               t.numel() * t.element_size());
  }
  return out;
}

Status WriteSafetensors(const std::string& path, const TensorMap& tensors,
                        const std::map<std::string, std::string>& metadata) {
  ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(tensors, metadata));
  return WriteFileAtomic(path, bytes);
}

StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(
    const std::string& path) {
  uint64_t file_size = 0;
  ASSIGN_OR_RETURN(const int fd, OpenRegularFile(path, &file_size));
  const size_t size = static_cast<size_t>(file_size);
  void* data = nullptr;
  if (size > 0) {
    data = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (data == MAP_FAILED) {
      std::string err = std::strerror(errno);
      ::close(fd);
      return Status::IoError("cannot map '" + path + "': " + err);
    }
  }
  ::close(fd);  // the mapping stays valid
  return std::unique_ptr<MappedFile>(new MappedFile(path, data, size));
}

void MappedFile::Release(uint64_t begin, uint64_t end) const {
  if (data_ == nullptr || begin >= end || end > size_) return;
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t first = (begin + page - 1) / page * page;
  const uint64_t last = end / page * page;
  if (first >= last) return;
  // Advice only: on failure the pages stay mapped until the file is closed.
  ::madvise(static_cast<char*>(data_) + first, last - first, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

}  // namespace model
}  // namespace fedpeft
