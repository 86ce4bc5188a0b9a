// The receiving side of a tensor stream: TensorDecoder, the state machine
// that validates each header against its limits (and the expected specs)
// before allocating, resolves tensors sent by index, and rebuilds the
// TensorMap; and SpecsOf, which builds those expected specs.
#include <algorithm>
#include <cstring>
#include <exception>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "proto/codec_internal.h"
#include "proto/tensor_codec.h"

namespace fedpeft {
namespace transport {

using internal::CheckLayout;
using internal::CheckName;
using internal::DecodePayload;
using internal::DTypeName;
using internal::Hex64;
using internal::Layout;
using internal::TorchDTypeName;

namespace {

// Converts `t` to `dtype` when it differs (a copy), else aliases it.
StatusOr<torch::Tensor> ConvertTo(torch::Tensor t, torch::Dtype dtype,
                                  const std::string& subject) {
  if (t.scalar_type() == dtype) return t;
  try {
    return t.to(dtype);
  } catch (const c10::Error& e) {
    return Status::Internal(subject + ": converting to " +
                            TorchDTypeName(dtype) + ": " +
                            e.what_without_backtrace());
  }
}

}  // namespace

std::map<std::string, TensorSpec> SpecsOf(const TensorMap& tensors) {
  std::map<std::string, TensorSpec> specs;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) continue;
    specs[name] = TensorSpec{t.sizes().vec(), t.scalar_type()};
  }
  return specs;
}

TensorDecoder::TensorDecoder(DecoderLimits limits)
    : limits_(std::move(limits)),
      schema_(limits_.expected ? Schema::OfKeys(*limits_.expected) : Schema()) {
}

Status TensorDecoder::Fail(Status status) {
  error_ = status;
  open_ = false;
  open_tensor_ = torch::Tensor();
  open_payload_ = std::string();
  tensors_.clear();
  return status;
}

Status TensorDecoder::CloseOpenTensor() {
  const std::string subject = "tensor '" + open_name_ + "'";
  torch::Tensor t;
  if (open_header_.codec() == proto::CODEC_QUANTIZED) {
    // The header passed CheckLayout when it came; this recomputes the layout.
    Layout layout;
    Status s = CheckLayout(open_header_, subject,
                           limits_.max_elements_per_tensor, &layout);
    if (!s.ok()) return Fail(s);
    StatusOr<torch::Tensor> decoded =
        DecodePayload(open_payload_.data(), layout, subject);
    open_payload_ = std::string();
    if (!decoded.ok()) return Fail(decoded.status());
    t = std::move(decoded).value();
  } else {
    t = std::move(open_tensor_);
  }
  if (limits_.output_dtype && open_header_.codec() != proto::CODEC_MASKED) {
    StatusOr<torch::Tensor> converted =
        ConvertTo(std::move(t), *limits_.output_dtype, subject);
    if (!converted.ok()) return Fail(converted.status());
    t = std::move(converted).value();
  }
  tensors_.emplace(std::move(open_name_), std::move(t));
  open_name_.clear();
  open_tensor_ = torch::Tensor();
  open_ = false;
  return Status::Ok();
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
  const size_t header_number = tensors_received() + 1;
  const std::string where = "tensor header " + std::to_string(header_number);
  if (header_number == 1) {
    stream_schema_ = header.schema();
  } else if (header.schema() != 0) {
    return Fail(Status::InvalidArgument(
        where + ": schema fingerprint " + Hex64(header.schema()) +
        " (expected it on the stream's first header only)"));
  }

  // The name, given or by index into the expected tensors' sorted names.
  std::string name = header.name();
  if (header.index() != 0) {
    const uint32_t index = header.index();
    if (!name.empty()) {
      return Fail(Status::InvalidArgument(
          where + ": both name '" + name.substr(0, 64) + "' and index " +
          std::to_string(index) + " set (expected one of them)"));
    }
    if (!limits_.expected) {
      return Fail(Status::InvalidArgument(
          where + ": tensor index " + std::to_string(index) +
          " but this decoder has no expected tensors to index (expected "
          "names)"));
    }
    if (stream_schema_ != schema_.fingerprint) {
      return Fail(Status::InvalidArgument(
          "tensor index " + std::to_string(index) +
          " but the stream's schema fingerprint " + Hex64(stream_schema_) +
          " differs from ours " + Hex64(schema_.fingerprint) +
          " (the two ends hold different adapters)"));
    }
    if (index > schema_.names.size()) {
      return Fail(Status::InvalidArgument(
          where + ": tensor index " + std::to_string(index) +
          " out of range (expected 1 to " +
          std::to_string(schema_.names.size()) + ", the expected tensors)"));
    }
    name = schema_.names[index - 1];
  }

  std::string bad = CheckName(name);
  if (!bad.empty()) {
    return Fail(Status::InvalidArgument(where + ": " + bad));
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

  Layout layout;
  Status s =
      CheckLayout(header, subject, limits_.max_elements_per_tensor, &layout);
  if (!s.ok()) return Fail(s);
  if (layout.masked != limits_.masked) {
    return Fail(Status::InvalidArgument(
        subject +
        (limits_.masked
             ? ": codec " + std::to_string(header.codec()) +
                   " in a secure-aggregation upload (expected CODEC_MASKED=2)"
             : std::string(": CODEC_MASKED outside a secure-aggregation "
                           "upload (expected values)"))));
  }
  const uint64_t nbytes = layout.bytes;
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

  if (limits_.expected) {
    auto it = limits_.expected->find(name);
    if (it == limits_.expected->end()) {
      return Fail(Status::InvalidArgument(
          subject + ": not an expected tensor (" +
          std::to_string(limits_.expected->size()) +
          " expected; maybe a different adapter config or base model?)"));
    }
    const TensorSpec& spec = it->second;
    if (layout.shape != spec.shape) {
      return Fail(Status::InvalidArgument(
          subject + ": shape " + ShapeString(layout.shape) + ", expected " +
          ShapeString(spec.shape) +
          " (maybe a different LoRA rank or base model?)"));
    }
    if (spec.dtype && !layout.masked) {
      if (limits_.output_dtype) {
        if (*spec.dtype != *limits_.output_dtype) {
          return Fail(Status::InvalidArgument(
              subject + ": decodes to output_dtype " +
              TorchDTypeName(*limits_.output_dtype) + ", expected " +
              TorchDTypeName(*spec.dtype)));
        }
      } else if (layout.quantized) {
        if (*spec.dtype != torch::kFloat32) {
          return Fail(Status::InvalidArgument(
              subject + ": CODEC_QUANTIZED decodes to F32, expected " +
              TorchDTypeName(*spec.dtype) + " (set output_dtype to convert)"));
        }
      } else if (*spec.dtype != layout.dtype) {
        return Fail(Status::InvalidArgument(
            subject + ": dtype " + DTypeName(header.dtype()) + ", expected " +
            TorchDTypeName(*spec.dtype)));
      }
    }
  }

  // Validated: now allocate, bounded by max_total_bytes. A quantized tensor
  // is buffered and decoded when complete.
  open_header_ = header;
  try {
    if (layout.quantized) {
      open_tensor_ = torch::Tensor();
      open_payload_.clear();
      open_payload_.reserve(nbytes);
    } else {
      open_tensor_ = torch::empty(
          layout.shape, torch::TensorOptions().dtype(layout.decoded_dtype()));
    }
  } catch (const std::exception& e) {  // c10::Error, std::bad_alloc
    return Fail(Status::Internal(subject + ": allocating " +
                                 std::to_string(nbytes) +
                                 " bytes: " + e.what()));
  }
  declared_bytes_ += nbytes;
  open_name_ = name;
  open_expected_ = nbytes;
  open_received_ = 0;
  open_ = true;
  last_name_ = name;
  if (nbytes == 0) return CloseOpenTensor();
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
  if (open_tensor_.defined()) {
    std::memcpy(static_cast<char*>(open_tensor_.data_ptr()) + open_received_,
                data.data(), data.size());
  } else {
    open_payload_.append(data);
  }
  open_received_ += data.size();
  bytes_ += data.size();
  if (open_received_ == open_expected_) return CloseOpenTensor();
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
