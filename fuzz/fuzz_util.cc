#include "fuzz/fuzz_util.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

namespace fedpeft {
namespace fuzz {

uint8_t InputReader::Byte() {
  if (pos_ >= size_) return 0;
  return static_cast<uint8_t>(data_[pos_++]);
}

uint16_t InputReader::U16() {
  const uint16_t lo = Byte();
  return static_cast<uint16_t>(lo | (Byte() << 8));
}

std::string_view InputReader::Frame() {
  size_t length = 0;
  for (size_t i = 0; i < kFrameLengthBytes; ++i) {
    length |= static_cast<size_t>(Byte()) << (8 * i);
  }
  length = std::min(length, size_ - std::min(pos_, size_));
  std::string_view frame(data_ + pos_, length);
  pos_ += length;
  return frame;
}

std::string_view InputReader::Rest() {
  if (pos_ >= size_) return {};
  std::string_view rest(data_ + pos_, size_ - pos_);
  pos_ = size_;
  return rest;
}

void AppendFrame(std::string_view bytes, std::string* out) {
  for (size_t i = 0; i < kFrameLengthBytes; ++i) {
    out->push_back(static_cast<char>((bytes.size() >> (8 * i)) & 0xff));
  }
  out->append(bytes);
}

ConfigInput SplitConfigInput(std::string_view input) {
  constexpr std::string_view kMarker = "\n#--set\n";
  ConfigInput out;
  const size_t at = input.find(kMarker);
  if (at == std::string_view::npos) {
    out.yaml = std::string(input);
    return out;
  }
  out.yaml = std::string(input.substr(0, at + 1));
  size_t start = at + kMarker.size();
  while (start < input.size() && out.overrides.size() < kMaxConfigOverrides) {
    size_t end = input.find('\n', start);
    if (end == std::string_view::npos) end = input.size();
    if (end > start) {
      out.overrides.emplace_back(input.substr(start, end - start));
    }
    start = end + 1;
  }
  return out;
}

std::map<std::string, transport::TensorSpec> FuzzAdapterSpecs() {
  constexpr int64_t kRank = 4;
  constexpr int64_t kWidth = 16;
  std::map<std::string, transport::TensorSpec> specs;
  for (int layer = 0; layer < 2; ++layer) {
    for (const char* proj : {"q_proj", "v_proj"}) {
      const std::string prefix = "base_model.model.model.layers." +
                                 std::to_string(layer) + ".self_attn." + proj;
      specs[prefix + ".lora_A.weight"] = {{kRank, kWidth}, torch::kFloat32};
      specs[prefix + ".lora_B.weight"] = {{kWidth, kRank}, torch::kFloat32};
    }
  }
  return specs;
}

namespace {

std::string ScratchDirectory() {
  std::error_code ec;
  if (::access("/dev/shm", W_OK) == 0) return "/dev/shm";
  const std::filesystem::path tmp = std::filesystem::temp_directory_path(ec);
  return ec ? std::string("/tmp") : tmp.string();
}

}  // namespace

ScratchFile::ScratchFile(const std::string& suffix)
    : path_(ScratchDirectory() + "/fedpeft-fuzz-" + std::to_string(::getpid()) +
            suffix) {}

ScratchFile::~ScratchFile() { std::remove(path_.c_str()); }

void ScratchFile::Write(std::string_view bytes) {
  std::FILE* f = std::fopen(path_.c_str(), "wb");
  FUZZ_CHECK(f != nullptr, "cannot create scratch file " + path_);
  const size_t written =
      bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
  FUZZ_CHECK(std::fclose(f) == 0 && written == bytes.size(),
             "cannot write scratch file " + path_);
}

}  // namespace fuzz
}  // namespace fedpeft
