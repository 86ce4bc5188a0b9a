#include "model/gguf_reader.h"

#include <cstring>
#include <limits>
#include <set>
#include <utility>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the GGUF reader assumes a little-endian host");

namespace fedpeft {
namespace model {
namespace {

// Bounds-checked reads from the file's bytes; each failure names the field.
class GgufCursor {
 public:
  GgufCursor(std::string_view bytes, const std::string& source)
      : bytes_(bytes), source_(source) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  Status Truncated(const std::string& field, uint64_t need) const {
    return Status::Corruption(
        source_ + ": " + field + " needs " + std::to_string(need) +
        " bytes at offset " + std::to_string(pos_) + ", the file has " +
        std::to_string(remaining()) + " left; truncated or not a GGUF file?");
  }

  template <typename T>
  Status Read(const std::string& field, T* out) {
    if (remaining() < sizeof(T)) return Truncated(field, sizeof(T));
    std::memcpy(out, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }

  Status ReadString(const std::string& field, std::string* out) {
    uint64_t n = 0;
    RETURN_IF_ERROR(Read(field + " length", &n));
    if (n > remaining()) return Truncated(field, n);
    out->assign(bytes_.data() + pos_, n);
    pos_ += n;
    return Status::Ok();
  }

 private:
  std::string_view bytes_;
  const std::string& source_;
  uint64_t pos_ = 0;
};

// Bytes of one scalar of `type`, 0 for strings, arrays and unknown types.
uint64_t GgufScalarBytes(uint32_t type) {
  switch (static_cast<GgufValueType>(type)) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    default:
      return 0;
  }
}

bool GgufIsInteger(GgufValueType t) {
  return t == GgufValueType::kUint8 || t == GgufValueType::kInt8 ||
         t == GgufValueType::kUint16 || t == GgufValueType::kInt16 ||
         t == GgufValueType::kUint32 || t == GgufValueType::kInt32 ||
         t == GgufValueType::kUint64 || t == GgufValueType::kInt64;
}

// The scalar of `type` at the cursor as a double.
Status GgufReadScalar(GgufCursor& in, const std::string& field, uint32_t type,
                      double* out) {
  switch (static_cast<GgufValueType>(type)) {
#define FEDPEFT_GGUF_SCALAR_(enumerator, ctype) \
  case GgufValueType::enumerator: {             \
    ctype v{};                                  \
    RETURN_IF_ERROR(in.Read(field, &v));        \
    *out = static_cast<double>(v);              \
    return Status::Ok();                        \
  }
    FEDPEFT_GGUF_SCALAR_(kUint8, uint8_t)
    FEDPEFT_GGUF_SCALAR_(kInt8, int8_t)
    FEDPEFT_GGUF_SCALAR_(kUint16, uint16_t)
    FEDPEFT_GGUF_SCALAR_(kInt16, int16_t)
    FEDPEFT_GGUF_SCALAR_(kUint32, uint32_t)
    FEDPEFT_GGUF_SCALAR_(kInt32, int32_t)
    FEDPEFT_GGUF_SCALAR_(kUint64, uint64_t)
    FEDPEFT_GGUF_SCALAR_(kInt64, int64_t)
    FEDPEFT_GGUF_SCALAR_(kFloat32, float)
    FEDPEFT_GGUF_SCALAR_(kFloat64, double)
#undef FEDPEFT_GGUF_SCALAR_
    case GgufValueType::kBool: {
      uint8_t v = 0;
      RETURN_IF_ERROR(in.Read(field, &v));
      *out = v != 0;
      return Status::Ok();
    }
    default:
      return Status::Internal("GgufReadScalar: not a scalar type");
  }
}

Status GgufReadValue(GgufCursor& in, const std::string& source,
                     const std::string& key, GgufValue* v) {
  uint32_t type = 0;
  RETURN_IF_ERROR(in.Read("type of key '" + key + "'", &type));
  const std::string field = "value of key '" + key + "'";
  v->type = static_cast<GgufValueType>(type);
  if (v->type == GgufValueType::kString) {
    return in.ReadString(field, &v->text);
  }
  if (GgufScalarBytes(type) > 0) {
    return GgufReadScalar(in, field, type, &v->number);
  }
  if (v->type != GgufValueType::kArray) {
    return Status::Corruption(source + ": key '" + key + "' has value type " +
                              std::to_string(type) + ", expected 0 to 12");
  }
  uint32_t element = 0;
  uint64_t n = 0;
  RETURN_IF_ERROR(in.Read("element type of key '" + key + "'", &element));
  RETURN_IF_ERROR(in.Read("length of key '" + key + "'", &n));
  v->element = static_cast<GgufValueType>(element);
  const uint64_t each = v->element == GgufValueType::kString
                            ? 8  // at least the length
                            : GgufScalarBytes(element);
  if (each == 0) {
    return Status::Corruption(source + ": array key '" + key +
                              "' has element type " + std::to_string(element) +
                              ", expected a scalar or string type");
  }
  if (n > kGgufMaxArray || n > in.remaining() / each) {
    return Status::Corruption(
        source + ": array key '" + key + "' declares " + std::to_string(n) +
        " elements, more than the " + std::to_string(in.remaining()) +
        " bytes left can hold (limit " + std::to_string(kGgufMaxArray) + ")");
  }
  if (v->element == GgufValueType::kString) {
    v->texts.resize(n);
    for (uint64_t i = 0; i < n; ++i) {
      RETURN_IF_ERROR(
          in.ReadString(field + " element " + std::to_string(i), &v->texts[i]));
    }
  } else {
    v->numbers.resize(n);
    for (uint64_t i = 0; i < n; ++i) {
      RETURN_IF_ERROR(GgufReadScalar(in, field, element, &v->numbers[i]));
    }
  }
  return Status::Ok();
}

const char* GgufValueTypeName(GgufValueType t) {
  static const char* const kNames[] = {
      "uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
      "bool",  "string", "array",  "uint64", "int64",  "float64"};
  const auto i = static_cast<uint32_t>(t);
  return i < 13 ? kNames[i] : "unknown";
}

// F16 bits -> float, exactly (every half is a float).
float GgufHalfToFloat(uint16_t bits) {
  c10::Half h;
  h.x = bits;
  return static_cast<float>(h);
}

// The tensor types ReadTensor reads; Parse bounds the extent of these
// only, so nothing may be computed from another type's info.
bool GgufReadable(GgufTensorType type) {
  return type == GgufTensorType::kF32 || type == GgufTensorType::kF16 ||
         type == GgufTensorType::kQ8_0;
}

}  // namespace

std::vector<int64_t> GgufTensorInfo::Shape() const {
  return std::vector<int64_t>(ne.rbegin(), ne.rend());
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

StatusOr<GgufReader> GgufReader::Parse(std::string_view bytes,
                                       std::string source) {
  GgufReader r;
  r.source_ = std::move(source);
  r.bytes_ = bytes;
  const std::string& src = r.source_;
  GgufCursor in(bytes, src);
  char magic[4] = {};
  RETURN_IF_ERROR(in.Read("magic", &magic));
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    return Status::Corruption(src + ": magic is not 'GGUF'; not a GGUF file");
  }
  RETURN_IF_ERROR(in.Read("version", &r.version_));
  if (r.version_ != 2 && r.version_ != 3) {
    return Status::Corruption(src + ": GGUF version " +
                              std::to_string(r.version_) + ", expected 2 or 3");
  }
  uint64_t n_tensors = 0;
  uint64_t n_kv = 0;
  RETURN_IF_ERROR(in.Read("tensor count", &n_tensors));
  RETURN_IF_ERROR(in.Read("metadata count", &n_kv));
  // A key needs at least 12 bytes (length + type), a tensor info 24.
  if (n_kv > kGgufMaxKeys || n_kv > in.remaining() / 12) {
    return Status::Corruption(
        src + ": metadata count " + std::to_string(n_kv) +
        " is more than the " + std::to_string(in.remaining()) +
        " bytes left can hold (limit " + std::to_string(kGgufMaxKeys) + ")");
  }
  if (n_tensors > kGgufMaxTensors || n_tensors > in.remaining() / 24) {
    return Status::Corruption(
        src + ": tensor count " + std::to_string(n_tensors) +
        " is more than the " + std::to_string(in.remaining()) +
        " bytes left can hold (limit " + std::to_string(kGgufMaxTensors) + ")");
  }
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    RETURN_IF_ERROR(in.ReadString("key " + std::to_string(i), &key));
    GgufValue v;
    RETURN_IF_ERROR(GgufReadValue(in, src, key, &v));
    if (!r.metadata_.emplace(key, std::move(v)).second) {
      return Status::Corruption(src + ": key '" + key + "' appears twice");
    }
  }
  auto align = r.metadata_.find("general.alignment");
  if (align != r.metadata_.end()) {
    const double a = align->second.number;
    if (!GgufIsInteger(align->second.type) || a < 1 || a > (1 << 20) ||
        (static_cast<uint64_t>(a) & (static_cast<uint64_t>(a) - 1)) != 0) {
      return Status::Corruption(
          src + ": general.alignment must be a power of two integer, got " +
          std::to_string(a));
    }
    r.alignment_ = static_cast<uint64_t>(a);
  }
  r.tensors_.reserve(n_tensors);
  std::set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    RETURN_IF_ERROR(
        in.ReadString("tensor " + std::to_string(i) + " name", &t.name));
    const std::string what = "tensor '" + t.name + "'";
    uint32_t n_dims = 0;
    RETURN_IF_ERROR(in.Read(what + " dim count", &n_dims));
    if (n_dims < 1 || n_dims > 4) {
      return Status::Corruption(src + ": " + what + " has " +
                                std::to_string(n_dims) +
                                " dims, expected 1 to 4");
    }
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t n = 0;
      RETURN_IF_ERROR(in.Read(what + " dim", &n));
      // Each dim and the product stay below 2^62 (no overflow below).
      if (n == 0 || n > (uint64_t{1} << 62) / numel) {
        return Status::Corruption(src + ": " + what + " has dim " +
                                  std::to_string(n) +
                                  ", expected a positive size whose product "
                                  "with the others is below 2^62");
      }
      numel *= n;
      t.ne.push_back(static_cast<int64_t>(n));
    }
    RETURN_IF_ERROR(in.Read(what + " type", &t.type));
    RETURN_IF_ERROR(in.Read(what + " offset", &t.offset));
    if (t.offset % r.alignment_ != 0) {
      return Status::Corruption(
          src + ": " + what + " has offset " + std::to_string(t.offset) +
          ", not a multiple of the alignment " + std::to_string(r.alignment_));
    }
    if (!names.insert(t.name).second) {
      return Status::Corruption(src + ": " + what + " appears twice");
    }
    r.tensors_.push_back(std::move(t));
  }
  r.data_offset_ = (in.pos() + r.alignment_ - 1) / r.alignment_ * r.alignment_;
  for (const GgufTensorInfo& t : r.tensors_) {
    const auto type = static_cast<GgufTensorType>(t.type);
    if (!GgufReadable(type)) continue;  // size unknown; ReadTensor refuses it
    if (type == GgufTensorType::kQ8_0 && t.ne[0] % kQ8_0BlockValues != 0) {
      return Status::Corruption(
          src + ": tensor '" + t.name + "' is Q8_0 with rows of " +
          std::to_string(t.ne[0]) + " values, expected a multiple of 32");
    }
    const uint64_t size = GgufTensorBytes(type, t.numel());
    if (r.data_offset_ > bytes.size() ||
        t.offset > bytes.size() - r.data_offset_ ||
        size > bytes.size() - r.data_offset_ - t.offset) {
      return Status::Corruption(
          src + ": tensor '" + t.name + "' (" + GgufTensorTypeName(type) +
          ", " + std::to_string(t.numel()) + " values, " +
          std::to_string(size) + " bytes at data offset " +
          std::to_string(t.offset) + ") ends past the end of the file (" +
          std::to_string(bytes.size()) + " bytes); truncated?");
    }
  }
  return r;
}

const GgufTensorInfo* GgufReader::FindTensor(const std::string& name) const {
  for (const GgufTensorInfo& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

namespace {

StatusOr<const GgufValue*> GgufFind(const std::map<std::string, GgufValue>& m,
                                    const std::string& source,
                                    const std::string& key,
                                    const std::string& expected) {
  auto it = m.find(key);
  if (it == m.end()) {
    return Status::Corruption(source + ": key '" + key +
                              "' is missing, expected " + expected);
  }
  return &it->second;
}

Status GgufWrongType(const std::string& source, const std::string& key,
                     const GgufValue& v, const std::string& expected) {
  std::string got = GgufValueTypeName(v.type);
  if (v.type == GgufValueType::kArray) {
    got += std::string(" of ") + GgufValueTypeName(v.element);
  }
  return Status::Corruption(source + ": key '" + key + "' is " + got +
                            ", expected " + expected);
}

}  // namespace

StatusOr<std::string> GgufReader::GetString(const std::string& key) const {
  ASSIGN_OR_RETURN(const GgufValue* v,
                   GgufFind(metadata_, source_, key, "a string"));
  if (v->type != GgufValueType::kString) {
    return GgufWrongType(source_, key, *v, "string");
  }
  return v->text;
}

StatusOr<int64_t> GgufReader::GetInt(const std::string& key, int64_t min,
                                     int64_t max) const {
  const std::string range = "an integer in [" + std::to_string(min) + ", " +
                            std::to_string(max) + "]";
  ASSIGN_OR_RETURN(const GgufValue* v,
                   GgufFind(metadata_, source_, key, range));
  if (!GgufIsInteger(v->type)) return GgufWrongType(source_, key, *v, range);
  if (!(v->number >= static_cast<double>(min) &&
        v->number <= static_cast<double>(max))) {
    return Status::Corruption(source_ + ": key '" + key + "' is " +
                              std::to_string(v->number) + ", expected " +
                              range);
  }
  return static_cast<int64_t>(v->number);
}

StatusOr<double> GgufReader::GetFloat(const std::string& key) const {
  ASSIGN_OR_RETURN(const GgufValue* v,
                   GgufFind(metadata_, source_, key, "a float"));
  if (v->type != GgufValueType::kFloat32 &&
      v->type != GgufValueType::kFloat64) {
    return GgufWrongType(source_, key, *v, "float32");
  }
  return v->number;
}

StatusOr<bool> GgufReader::GetBool(const std::string& key) const {
  ASSIGN_OR_RETURN(const GgufValue* v,
                   GgufFind(metadata_, source_, key, "a bool"));
  if (v->type != GgufValueType::kBool) {
    return GgufWrongType(source_, key, *v, "bool");
  }
  return v->number != 0;
}

StatusOr<std::vector<std::string>> GgufReader::GetStringArray(
    const std::string& key) const {
  ASSIGN_OR_RETURN(const GgufValue* v,
                   GgufFind(metadata_, source_, key, "an array of strings"));
  if (v->type != GgufValueType::kArray ||
      v->element != GgufValueType::kString) {
    return GgufWrongType(source_, key, *v, "array of string");
  }
  return v->texts;
}

StatusOr<std::vector<double>> GgufReader::GetNumberArray(
    const std::string& key) const {
  ASSIGN_OR_RETURN(const GgufValue* v,
                   GgufFind(metadata_, source_, key, "an array of numbers"));
  if (v->type != GgufValueType::kArray ||
      v->element == GgufValueType::kString) {
    return GgufWrongType(source_, key, *v, "array of numbers");
  }
  return v->numbers;
}

StatusOr<torch::Tensor> GgufReader::ReadTensor(
    const GgufTensorInfo& info) const {
  const auto type = static_cast<GgufTensorType>(info.type);
  // Before the offset or the size is used: Parse checked them against the
  // file for the readable types alone (a Q4_K tensor's offset may point
  // anywhere, its numel may be 2^61).
  if (!GgufReadable(type)) {
    return Status::Unimplemented(
        source_ + ": tensor '" + info.name + "' has ggml type " +
        std::to_string(info.type) +
        ", only F32 (0), F16 (1) and Q8_0 (8) can be read");
  }
  const int64_t n = info.numel();
  const char* p = bytes_.data() + data_offset_ + info.offset;
  torch::Tensor out = torch::empty({n}, torch::kFloat32);
  float* dst = out.data_ptr<float>();
  switch (type) {
    case GgufTensorType::kF32:
      std::memcpy(dst, p, 4 * static_cast<size_t>(n));
      break;
    case GgufTensorType::kF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t bits = 0;
        std::memcpy(&bits, p + 2 * i, 2);
        dst[i] = GgufHalfToFloat(bits);
      }
      break;
    case GgufTensorType::kQ8_0:
      for (int64_t b = 0; b < n / kQ8_0BlockValues; ++b) {
        const char* block = p + b * kQ8_0BlockBytes;
        uint16_t bits = 0;
        std::memcpy(&bits, block, 2);
        const float d = GgufHalfToFloat(bits);
        for (int64_t i = 0; i < kQ8_0BlockValues; ++i) {
          dst[b * kQ8_0BlockValues + i] =
              d * static_cast<float>(static_cast<int8_t>(block[2 + i]));
        }
      }
      break;
  }
  return out.reshape(info.Shape());
}

}  // namespace model
}  // namespace fedpeft
