#include "proto/tensor_codec.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <sstream>
#include <utility>

// CODEC_RAW is little-endian and both ends memcpy element bytes; a big-endian
// host would need a byte swap in EncodeTensors and TensorDecoder::AddData.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "fedpeft's tensor codec assumes a little-endian host"
#endif

namespace fedpeft {
namespace transport {
namespace {

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

Status EncodeTensors(
    const TensorMap& tensors, size_t chunk_bytes,
    const std::function<bool(const proto::TensorChunk&)>& write) {
  if (chunk_bytes == 0) {
    return Status::InvalidArgument("chunk_bytes: must be >= 1, got 0");
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

  try {
    proto::TensorChunk header_chunk;
    proto::TensorChunk data_chunk;
    std::string* data = data_chunk.mutable_data()->mutable_data();
    for (const auto& [name, tensor] : tensors) {
      // Aliases `tensor` when it already is a contiguous CPU tensor; otherwise
      // a contiguous CPU copy lives for this iteration only.
      const torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
      const uint64_t nbytes =
          static_cast<uint64_t>(t.numel()) * t.element_size();

      proto::TensorHeader* header = header_chunk.mutable_header();
      header->set_name(name);
      header->set_dtype(ToProtoDType(t.scalar_type()));
      header->clear_shape();
      for (int64_t d : t.sizes()) header->add_shape(d);
      header->set_codec(proto::CODEC_RAW);
      header->set_encoded_bytes(nbytes);
      if (!write(header_chunk)) {
        return Status::Unavailable(
            "tensor stream broken while writing the "
            "header of '" +
            name + "'");
      }

      const char* bytes = static_cast<const char*>(t.data_ptr());
      for (uint64_t offset = 0; offset < nbytes; offset += chunk_bytes) {
        const size_t n = static_cast<size_t>(
            std::min<uint64_t>(chunk_bytes, nbytes - offset));
        data->assign(bytes + offset, n);
        if (!write(data_chunk)) {
          return Status::Unavailable(
              "tensor stream broken while writing '" + name + "' at byte " +
              std::to_string(offset) + " of " + std::to_string(nbytes));
        }
      }
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
    : limits_(std::move(limits)) {}

Status TensorDecoder::Fail(Status status) {
  error_ = status;
  open_ = false;
  open_tensor_ = torch::Tensor();
  tensors_.clear();
  return status;
}

void TensorDecoder::CloseOpenTensor() {
  tensors_.emplace(std::move(open_name_), std::move(open_tensor_));
  open_name_.clear();
  open_tensor_ = torch::Tensor();
  open_ = false;
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
  const std::string& name = header.name();
  std::string bad = CheckName(name);
  if (!bad.empty()) {
    return Fail(Status::InvalidArgument("tensor header " +
                                        std::to_string(tensors_received() + 1) +
                                        ": " + bad));
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

  std::optional<torch::Dtype> dtype = FromProtoDType(header.dtype());
  if (!dtype) {
    return Fail(Status::InvalidArgument(subject + ": dtype " +
                                        std::to_string(header.dtype()) +
                                        " (expected F32=1, F16=2 or BF16=3)"));
  }
  if (header.codec() != proto::CODEC_RAW) {
    return Fail(Status::InvalidArgument(
        subject + ": codec " + std::to_string(header.codec()) +
        " (expected CODEC_RAW=0; this build decodes no other)"));
  }
  if (header.shape_size() > kMaxTensorDims) {
    return Fail(Status::InvalidArgument(
        subject + ": " + std::to_string(header.shape_size()) +
        " dimensions (at most " + std::to_string(kMaxTensorDims) + ")"));
  }
  // Element count, checked against the limit at every step so it cannot
  // overflow: numel <= max_elements_per_tensor <= INT64_MAX.
  int64_t numel = 1;
  for (int i = 0; i < header.shape_size(); ++i) {
    const int64_t d = header.shape(i);
    if (d < 0) {
      return Fail(Status::InvalidArgument(
          subject + ": shape " + ShapeString(header.shape()) +
          " has negative dimension " + std::to_string(i) +
          " (expected sizes >= 0)"));
    }
    if (d != 0 && numel > limits_.max_elements_per_tensor / d) {
      return Fail(Status::InvalidArgument(
          subject + ": shape " + ShapeString(header.shape()) +
          " has more than max_elements_per_tensor " +
          std::to_string(limits_.max_elements_per_tensor) + " elements"));
    }
    numel *= d;
  }
  if (numel > limits_.max_elements_per_tensor) {  // a scalar with limit 0
    return Fail(Status::InvalidArgument(
        subject + ": " + std::to_string(numel) +
        " elements, more than max_elements_per_tensor " +
        std::to_string(limits_.max_elements_per_tensor)));
  }
  const uint64_t element_size = c10::elementSize(*dtype);
  const uint64_t nbytes = static_cast<uint64_t>(numel) * element_size;
  if (header.encoded_bytes() != nbytes) {
    return Fail(Status::InvalidArgument(
        subject + ": encoded_bytes " + std::to_string(header.encoded_bytes()) +
        " but shape " + ShapeString(header.shape()) + " of " +
        DTypeName(header.dtype()) + " takes " + std::to_string(nbytes) +
        " bytes raw"));
  }
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

  std::vector<int64_t> shape(header.shape().begin(), header.shape().end());
  if (limits_.expected) {
    auto it = limits_.expected->find(name);
    if (it == limits_.expected->end()) {
      return Fail(Status::InvalidArgument(
          subject + ": not an expected tensor (" +
          std::to_string(limits_.expected->size()) +
          " expected; maybe a different adapter config or base model?)"));
    }
    const TensorSpec& spec = it->second;
    if (shape != spec.shape) {
      return Fail(
          Status::InvalidArgument(subject + ": shape " + ShapeString(shape) +
                                  ", expected " + ShapeString(spec.shape) +
                                  " (maybe a different LoRA rank or base "
                                  "model?)"));
    }
    if (spec.dtype && *spec.dtype != *dtype) {
      return Fail(Status::InvalidArgument(
          subject + ": dtype " + DTypeName(header.dtype()) + ", expected " +
          DTypeName(ToProtoDType(*spec.dtype))));
    }
  }

  // Validated: now allocate. Bounded by max_total_bytes.
  try {
    open_tensor_ = torch::empty(shape, torch::TensorOptions().dtype(*dtype));
  } catch (const c10::Error& e) {
    return Fail(Status::Internal(subject + ": allocating " +
                                 std::to_string(nbytes) +
                                 " bytes: " + e.what_without_backtrace()));
  }
  declared_bytes_ += nbytes;
  open_name_ = name;
  open_expected_ = nbytes;
  open_received_ = 0;
  open_ = true;
  last_name_ = name;
  if (nbytes == 0) CloseOpenTensor();
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
  std::memcpy(static_cast<char*>(open_tensor_.data_ptr()) + open_received_,
              data.data(), data.size());
  open_received_ += data.size();
  bytes_ += data.size();
  if (open_received_ == open_expected_) CloseOpenTensor();
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
