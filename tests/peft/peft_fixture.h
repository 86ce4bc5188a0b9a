// The fixture of the peft/ tests (peft_test.cc, peft_io_test.cc): the
// shipped stories260K model (5 layers, dim 64, 8 heads / 4 KV heads, hidden
// 172) loaded once per suite, and helpers that build adapters on it.
#ifndef FEDPEFT_TESTS_PEFT_PEFT_FIXTURE_H_
#define FEDPEFT_TESTS_PEFT_PEFT_FIXTURE_H_

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "common/config.h"
#include "common/file_util.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "peft/bottleneck.h"
#include "peft/lora.h"
#include "peft/peft_io.h"
#include "peft/peft_model.h"

namespace fedpeft {
namespace peft {
namespace testing_util {

inline const std::string kModelDir =
    std::string(FEDPEFT_SOURCE_DIR) + "/assets/stories260K";

class PeftTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto loaded = model::LoadModel(kModelDir);
    ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
    base_ = new std::shared_ptr<const model::LlamaWeights>(loaded.value());
  }
  static void TearDownTestSuite() {
    delete base_;
    base_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(base_, nullptr) << "base model failed to load";
    torch::NoGradGuard no_grad;
    base_logits_ = model::LlamaModel(base()).Forward(Tokens());
  }

  static std::shared_ptr<const model::LlamaWeights> base() { return *base_; }

  static torch::Tensor Tokens() {
    return torch::tensor({1, 403, 29, 7, 311, 95, 260, 480, 13, 2},
                         torch::kInt64)
        .reshape({1, -1});
  }

  static torch::Tensor Logits(PeftModel& m) {
    torch::NoGradGuard no_grad;
    return m.model().Forward(Tokens());
  }

  static std::unique_ptr<PeftModel> Make(const PeftOptions& options,
                                         uint64_t seed = 1) {
    auto m = PeftModel::Create(base(), options, seed);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
    return m.ok() ? std::move(m).value() : nullptr;
  }

  // Fills every adapter tensor with normal(0, stddev) noise.
  static void Randomize(PeftModel& m, uint64_t seed, double stddev = 0.05) {
    at::Generator gen = at::detail::createCPUGenerator(seed);
    torch::NoGradGuard no_grad;
    for (auto& [key, t] : m.AdapterTensors()) {
      t.copy_(torch::randn(t.sizes(), gen) * stddev);
    }
  }

  std::string TempDir(const std::string& name) {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string dir = ::testing::TempDir() + "/peft_test_" + info->name() +
                      "_" + name + "_" + std::to_string(::getpid());
    std::filesystem::remove_all(dir);
    return dir;
  }

  static void WriteText(const std::string& path, const std::string& text) {
    ASSERT_TRUE(WriteFileAtomic(path, text).ok()) << path;
  }

  static nlohmann::json ReadJson(const std::string& path) {
    auto text = ReadFileToString(path);
    EXPECT_TRUE(text.ok()) << text.status().ToString();
    return nlohmann::json::parse(text.ok() ? text.value() : "{}");
  }

  torch::Tensor base_logits_;

 private:
  inline static std::shared_ptr<const model::LlamaWeights>* base_ = nullptr;
};

inline PeftOptions LoraOpts(
    std::vector<std::string> targets = {"q_proj", "k_proj", "v_proj", "o_proj"},
    int r = 8) {
  PeftOptions o;
  o.method = "lora";
  o.lora.r = r;
  o.lora.alpha = 16;
  o.lora.target_modules = std::move(targets);
  return o;
}

inline PeftOptions BottleneckOpts(int dim = 8) {
  PeftOptions o;
  o.method = "bottleneck";
  o.bottleneck.bottleneck_dim = dim;
  o.bottleneck.activation = "gelu";
  return o;
}

}  // namespace testing_util
}  // namespace peft
}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_PEFT_PEFT_FIXTURE_H_
