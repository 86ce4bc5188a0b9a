#include "security/secagg_update.h"

#include <torch/torch.h>

#include <algorithm>

#include "security/secagg_fixed_point.h"
#include "security/secagg_messages.h"

namespace fedpeft {
namespace secagg {

std::vector<std::string> MaskedTensorNames(const TensorMap& adapter,
                                           const std::set<std::string>& frozen,
                                           bool ffa) {
  std::vector<std::string> names;
  for (const auto& kv : adapter) {  // a std::map: sorted
    if (frozen.count(kv.first)) continue;
    if (ffa && kv.first.find(".lora_A.") != std::string::npos) continue;
    names.push_back(kv.first);
  }
  return names;
}

StatusOr<uint64_t> MaskedVectorLength(const TensorMap& shapes,
                                      const std::vector<std::string>& names) {
  uint64_t words = 1;  // the unclipped bit
  for (const std::string& name : names) {
    auto it = shapes.find(name);
    if (it == shapes.end()) {
      return Status::InvalidArgument("secure aggregation: tensor '" + name +
                                     "' is not in the adapter");
    }
    words += static_cast<uint64_t>(it->second.numel());
    if (words > kMaxVectorLength) {
      return Status::InvalidArgument(
          "secure aggregation: the update has more than " +
          std::to_string(kMaxVectorLength) + " elements");
    }
  }
  return words;
}

StatusOr<std::vector<uint32_t>> EncodeUpdateWords(
    const TensorMap& update, const TensorMap& shapes,
    const std::vector<std::string>& names, double scale, bool unclipped,
    std::mt19937_64& rng) {
  ASSIGN_OR_RETURN(uint64_t length, MaskedVectorLength(shapes, names));
  for (const auto& kv : update) {
    if (!std::binary_search(names.begin(), names.end(), kv.first)) {
      return Status::InvalidArgument(
          "secure aggregation: the update has tensor '" + kv.first +
          "', which this round does not aggregate (frozen, or FFA's A)");
    }
  }
  std::vector<uint32_t> words;
  words.reserve(length);
  for (const std::string& name : names) {
    const torch::Tensor& like = shapes.at(name);
    auto it = update.find(name);
    if (it == update.end()) {
      words.insert(words.end(), static_cast<size_t>(like.numel()), 0u);
      continue;
    }
    if (!it->second.sizes().equals(like.sizes())) {
      return Status::InvalidArgument("secure aggregation: tensor '" + name +
                                     "' has the wrong shape");
    }
    torch::Tensor t =
        it->second.detach().to(torch::kCPU, torch::kFloat32).contiguous();
    StatusOr<std::vector<uint32_t>> encoded = FixedPointEncode(
        t.data_ptr<float>(), static_cast<size_t>(t.numel()), scale, rng);
    if (!encoded.ok()) {
      return encoded.status().WithContext("tensor '" + name + "'");
    }
    words.insert(words.end(), encoded->begin(), encoded->end());
  }
  words.push_back(unclipped ? 1u : 0u);
  return words;
}

StatusOr<TensorMap> DecodeSumWords(const std::vector<uint32_t>& words,
                                   const TensorMap& shapes,
                                   const std::vector<std::string>& names,
                                   double scale, uint32_t* unclipped) {
  ASSIGN_OR_RETURN(uint64_t length, MaskedVectorLength(shapes, names));
  if (words.size() != length) {
    return Status::InvalidArgument(
        "secure aggregation: the sum has " + std::to_string(words.size()) +
        " words, expected " + std::to_string(length));
  }
  const std::vector<double> values = FixedPointDecode(words, scale);
  TensorMap out;
  size_t offset = 0;
  for (const std::string& name : names) {
    const torch::Tensor& like = shapes.at(name);
    torch::Tensor t = torch::empty(like.sizes(), torch::kFloat32);
    float* dst = t.data_ptr<float>();
    const size_t n = static_cast<size_t>(like.numel());
    for (size_t i = 0; i < n; ++i) {
      dst[i] = static_cast<float>(values[offset + i]);
    }
    offset += n;
    out[name] = std::move(t);
  }
  *unclipped = words.back();
  return out;
}

}  // namespace secagg
}  // namespace fedpeft
