// Helpers shared by the LlamaModel and LlamaConfig tests (llama_test.cc,
// llama_config_test.cc): the shipped stories260K model, temp folders, HF
// folders written from tensors and a config.
#ifndef FEDPEFT_TESTS_MODEL_LLAMA_TEST_UTIL_H_
#define FEDPEFT_TESTS_MODEL_LLAMA_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "model/llama.h"
#include "model/loader.h"
#include "model/safetensors.h"

namespace fedpeft {
namespace model {
namespace test {

inline const std::string kHfDir =
    std::string(FEDPEFT_SOURCE_DIR) + "/assets/stories260K";
inline const std::string kBinPath =
    std::string(FEDPEFT_SOURCE_DIR) +
    "/assets/stories260K-llama2c/stories260K.bin";
// "Once upon a time" with BOS in the stories260K vocabulary.
inline const std::vector<int64_t> kPrompt = {1, 403, 407, 261, 378};

inline torch::Tensor PromptTensor() {
  return torch::tensor(kPrompt, torch::kInt64).view({1, -1});
}

// Two float32 computations of the same logits (|logit| up to ~20) that sum
// in another order (a chunked KV cache, merged weights, a batch) differ by a
// few ulps, i.e. up to ~2e-5 absolute (1.5e-5 seen on one CPU's kernels);
// a real bug moves logits by far more than 1e-4.
constexpr double kLogitTol = 1e-4;

// A [1, n] int64 batch of one sequence.
inline torch::Tensor Tokens(const std::vector<int64_t>& ids) {
  return torch::tensor(ids, torch::kInt64).view({1, -1});
}

inline double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

inline std::shared_ptr<const LlamaWeights> LoadOrDie(
    const std::string& path, const LoadOptions& opts = {}) {
  auto w = LoadModel(path, opts);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  return w.ok() ? *w : nullptr;
}

inline torch::Tensor PromptLogits(std::shared_ptr<const LlamaWeights> w) {
  torch::NoGradGuard no_grad;
  LlamaModel model(std::move(w));
  return model.Forward(PromptTensor());
}

// A fresh directory under the system temp dir, removed at the end.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = (std::filesystem::temp_directory_path() /
             ("fedpeft_llama_test_" + std::to_string(::getpid()) + "_" +
              std::to_string(counter++)))
                .string();
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const {
    return JoinPath(path_, name);
  }

 private:
  std::string path_;
};

// Writes an HF folder: the shipped config.json (or `config`) and `tensors`.
inline void WriteHfFolder(const TempDir& dir, const TensorMap& tensors,
                          const std::string& config = "") {
  std::string cfg = config;
  if (cfg.empty()) {
    auto text = ReadFileToString(kHfDir + "/config.json");
    ASSERT_TRUE(text.ok());
    cfg = *text;
  }
  ASSERT_TRUE(WriteFileAtomic(dir.File("config.json"), cfg).ok());
  ASSERT_TRUE(WriteSafetensors(dir.File("model.safetensors"), tensors).ok());
}

inline TensorMap ShippedTensors() {
  auto c = ReadSafetensors(kHfDir + "/model.safetensors");
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? c->tensors : TensorMap{};
}

// The shipped config.json with `key` set to `value`.
inline std::string ShippedConfigWith(const std::string& key,
                                     const nlohmann::json& value) {
  auto text = ReadFileToString(kHfDir + "/config.json");
  EXPECT_TRUE(text.ok());
  nlohmann::json j = nlohmann::json::parse(text.ok() ? *text : "{}");
  j[key] = value;
  return j.dump();
}

}  // namespace test
}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_MODEL_LLAMA_TEST_UTIL_H_
