#include "model/gguf_writer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/file_util.h"

// Tensor bytes are copied from torch's memory as they are; GGUF is
// little-endian.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the GGUF writer assumes a little-endian host");

namespace fedpeft {
namespace model {
namespace {

void GgufPutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

void GgufPutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

void GgufPutF32(std::string* out, float v) {
  uint32_t bits = 0;
  std::memcpy(&bits, &v, 4);
  GgufPutU32(out, bits);
}

void GgufPutString(std::string* out, const std::string& s) {
  GgufPutU64(out, s.size());
  out->append(s);
}

void GgufPutType(std::string* out, GgufValueType type) {
  GgufPutU32(out, static_cast<uint32_t>(type));
}

uint64_t GgufAlignUp(uint64_t n) {
  return (n + kGgufAlignment - 1) / kGgufAlignment * kGgufAlignment;
}

// IEEE half of `v`, rounded to nearest even (torch's conversion).
uint16_t GgufHalfBits(float v) {
  const c10::Half h(v);
  return h.x;
}

}  // namespace

const char* GgufTensorTypeName(GgufTensorType type) {
  switch (type) {
    case GgufTensorType::kF32:
      return "F32";
    case GgufTensorType::kF16:
      return "F16";
    case GgufTensorType::kQ8_0:
      return "Q8_0";
  }
  return "?";
}

uint64_t GgufTensorBytes(GgufTensorType type, int64_t n) {
  switch (type) {
    case GgufTensorType::kF32:
      return 4 * static_cast<uint64_t>(n);
    case GgufTensorType::kF16:
      return 2 * static_cast<uint64_t>(n);
    case GgufTensorType::kQ8_0:
      return static_cast<uint64_t>(n / kQ8_0BlockValues) * kQ8_0BlockBytes;
  }
  return 0;
}

std::string QuantizeQ8_0(const float* x, int64_t n) {
  std::string out;
  out.reserve(GgufTensorBytes(GgufTensorType::kQ8_0, n));
  for (int64_t b = 0; b < n; b += kQ8_0BlockValues) {
    float amax = 0.0f;
    for (int64_t i = 0; i < kQ8_0BlockValues; ++i) {
      amax = std::max(amax, std::fabs(x[b + i]));
    }
    // The scale is rounded to F16 for storage, but the values are divided
    // by the float32 scale, as llama.cpp's converter (gguf-py) does.
    const float d = amax / 127.0f;
    const uint16_t d_bits = GgufHalfBits(d);
    out.push_back(static_cast<char>(d_bits & 0xff));
    out.push_back(static_cast<char>(d_bits >> 8));
    for (int64_t i = 0; i < kQ8_0BlockValues; ++i) {
      const float q = d == 0.0f ? 0.0f : std::round(x[b + i] / d);
      out.push_back(static_cast<char>(
          static_cast<int8_t>(std::clamp(q, -127.0f, 127.0f))));
    }
  }
  return out;
}

void GgufWriter::SetRaw(const std::string& key, std::string typed_value) {
  for (Kv& kv : kv_) {
    if (kv.key == key) {
      kv.value = std::move(typed_value);
      return;
    }
  }
  kv_.push_back(Kv{key, std::move(typed_value)});
}

void GgufWriter::SetString(const std::string& key, const std::string& value) {
  std::string v;
  GgufPutType(&v, GgufValueType::kString);
  GgufPutString(&v, value);
  SetRaw(key, std::move(v));
}

void GgufWriter::SetUint32(const std::string& key, uint32_t value) {
  std::string v;
  GgufPutType(&v, GgufValueType::kUint32);
  GgufPutU32(&v, value);
  SetRaw(key, std::move(v));
}

void GgufWriter::SetInt32(const std::string& key, int32_t value) {
  std::string v;
  GgufPutType(&v, GgufValueType::kInt32);
  GgufPutU32(&v, static_cast<uint32_t>(value));
  SetRaw(key, std::move(v));
}

void GgufWriter::SetFloat32(const std::string& key, float value) {
  std::string v;
  GgufPutType(&v, GgufValueType::kFloat32);
  GgufPutF32(&v, value);
  SetRaw(key, std::move(v));
}

void GgufWriter::SetBool(const std::string& key, bool value) {
  std::string v;
  GgufPutType(&v, GgufValueType::kBool);
  v.push_back(value ? 1 : 0);
  SetRaw(key, std::move(v));
}

void GgufWriter::SetStringArray(const std::string& key,
                                const std::vector<std::string>& values) {
  std::string v;
  GgufPutType(&v, GgufValueType::kArray);
  GgufPutType(&v, GgufValueType::kString);
  GgufPutU64(&v, values.size());
  for (const std::string& s : values) GgufPutString(&v, s);
  SetRaw(key, std::move(v));
}

void GgufWriter::SetFloat32Array(const std::string& key,
                                 const std::vector<float>& values) {
  std::string v;
  GgufPutType(&v, GgufValueType::kArray);
  GgufPutType(&v, GgufValueType::kFloat32);
  GgufPutU64(&v, values.size());
  for (float f : values) GgufPutF32(&v, f);
  SetRaw(key, std::move(v));
}

void GgufWriter::SetInt32Array(const std::string& key,
                               const std::vector<int32_t>& values) {
  std::string v;
  GgufPutType(&v, GgufValueType::kArray);
  GgufPutType(&v, GgufValueType::kInt32);
  GgufPutU64(&v, values.size());
  for (int32_t i : values) GgufPutU32(&v, static_cast<uint32_t>(i));
  SetRaw(key, std::move(v));
}

Status GgufWriter::AddTensor(const std::string& name,
                             const torch::Tensor& tensor, GgufTensorType type) {
  auto bad = [&name](const std::string& what) {
    return Status::InvalidArgument("GGUF tensor '" + name + "': " + what);
  };
  if (name.empty() || name.size() > kGgufMaxTensorName) {
    return bad("name must have 1 to " + std::to_string(kGgufMaxTensorName) +
               " bytes (llama.cpp's limit), got " +
               std::to_string(name.size()));
  }
  for (const TensorEntry& t : tensors_) {
    if (t.name == name) return bad("added twice");
  }
  if (!tensor.defined() || !tensor.is_floating_point()) {
    return bad("must be a floating-point tensor");
  }
  if (tensor.dim() < 1 || tensor.dim() > 4 || tensor.numel() == 0) {
    return bad("must have 1 to 4 non-empty dims, got shape " +
               c10::str(tensor.sizes()));
  }
  const int64_t inner = tensor.size(-1);
  if (type == GgufTensorType::kQ8_0 && inner % kQ8_0BlockValues != 0) {
    return bad("Q8_0 needs an innermost dim divisible by 32, got shape " +
               c10::str(tensor.sizes()));
  }
  TensorEntry entry;
  entry.name = name;
  entry.type = type;
  for (int64_t d = tensor.dim() - 1; d >= 0; --d) {
    entry.ne.push_back(tensor.size(d));
  }
  const torch::Tensor cpu = tensor.detach().to(torch::kCPU);
  if (type == GgufTensorType::kQ8_0) {
    const torch::Tensor f = cpu.to(torch::kFloat32).contiguous();
    entry.data = QuantizeQ8_0(f.data_ptr<float>(), f.numel());
  } else {
    const torch::Tensor c =
        cpu.to(type == GgufTensorType::kF32 ? torch::kFloat32 : torch::kFloat16)
            .contiguous();
    entry.data.assign(static_cast<const char*>(c.data_ptr()), c.nbytes());
  }
  tensors_.push_back(std::move(entry));
  return Status::Ok();
}

std::string GgufWriter::Serialize() const {
  std::string out;
  out.append("GGUF", 4);
  GgufPutU32(&out, kGgufVersion);
  GgufPutU64(&out, tensors_.size());
  GgufPutU64(&out, kv_.size());
  for (const Kv& kv : kv_) {
    GgufPutString(&out, kv.key);
    out.append(kv.value);
  }
  uint64_t offset = 0;
  for (const TensorEntry& t : tensors_) {
    GgufPutString(&out, t.name);
    GgufPutU32(&out, static_cast<uint32_t>(t.ne.size()));
    for (int64_t n : t.ne) GgufPutU64(&out, static_cast<uint64_t>(n));
    GgufPutU32(&out, static_cast<uint32_t>(t.type));
    GgufPutU64(&out, offset);
    offset = GgufAlignUp(offset + t.data.size());
  }
  out.resize(GgufAlignUp(out.size()), '\0');
  for (const TensorEntry& t : tensors_) {
    out.append(t.data);
    out.resize(GgufAlignUp(out.size()), '\0');
  }
  return out;
}

Status GgufWriter::Write(const std::string& path) const {
  return WriteFileAtomic(path, Serialize());
}

}  // namespace model
}  // namespace fedpeft
