// Today's architectures against an independent implementation: tiny random
// checkpoints shrunk from the real config.json of Llama-3.2-1B (llama3 and
// dynamic rope scaling), Qwen3-0.6B (q_norm/k_norm, head_dim != hidden /
// heads), Qwen2.5-0.5B (biases, yarn scaling) and SmolLM2-135M (linear
// scaling), committed with the logits of the NumPy forward
// (tests/reference/make_arch_fixtures.py, float64) in
// tests/reference/arch/<case>/. The fixtures are regenerated only by that
// script, never by this test.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "model/llama.h"
#include "model/loader.h"
#include "tests/model/llama_test_util.h"

namespace fedpeft {
namespace model {
namespace {

const std::string kArchDir =
    std::string(FEDPEFT_SOURCE_DIR) + "/tests/reference/arch/";

// As in reference_test.cc: float64 reference rounded to float32 against a
// float32 forward. Observed max errors are printed by each test (and
// recorded as test properties); a real bug moves logits by far more.
constexpr double kReferenceTol = 1e-4;

struct Fixture {
  std::vector<int64_t> ids;
  torch::Tensor logits;  // [T, vocab] float32
};

// Parses <case>/logits.json; fails the calling test and returns {} on any
// problem.
Fixture LoadFixture(const std::string& name) {
  const std::string path = kArchDir + name + "/logits.json";
  auto text = ReadFileToString(path);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  if (!text.ok()) return {};
  Fixture f;
  try {
    const nlohmann::json s = nlohmann::json::parse(*text).at("sequences")[0];
    f.ids = s.at("ids").get<std::vector<int64_t>>();
    const auto rows = s.at("logits").get<std::vector<std::vector<float>>>();
    std::vector<torch::Tensor> parts;
    for (const auto& row : rows) {
      parts.push_back(torch::tensor(row, torch::kFloat32));
    }
    f.logits = torch::stack(parts);
  } catch (const std::exception& e) {
    ADD_FAILURE() << path << ": " << e.what();
    return {};
  }
  EXPECT_EQ(f.logits.size(0), static_cast<int64_t>(f.ids.size())) << path;
  return f;
}

std::shared_ptr<const LlamaWeights> Load(const std::string& dir) {
  auto w = LoadHfModel(dir);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  return w.ok() ? *w : nullptr;
}

// Logits of one whole-sequence forward of the checkpoint in `dir`.
torch::Tensor Logits(const std::string& dir, const std::vector<int64_t>& ids) {
  auto weights = Load(dir);
  if (!weights) return torch::Tensor();
  torch::NoGradGuard no_grad;
  LlamaModel model(weights);
  return model.Forward(test::Tokens(ids))[0];
}

class ArchReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ArchReferenceTest, LogitsMatchNumpy) {
  const std::string name = GetParam();
  const Fixture f = LoadFixture(name);
  ASSERT_TRUE(f.logits.defined());
  // The fixture can catch a broken forward: finite, spread over several
  // units in every row, and far from constant across positions.
  EXPECT_TRUE(torch::isfinite(f.logits).all().item<bool>());
  EXPECT_GT((f.logits.amax(-1) - f.logits.amin(-1)).min().item<double>(), 1.0);
  const torch::Tensor got = Logits(kArchDir + name, f.ids);
  ASSERT_TRUE(got.defined());
  ASSERT_EQ(got.sizes(), f.logits.sizes());
  const double err = test::MaxAbsDiff(got, f.logits);
  EXPECT_LE(err, kReferenceTol) << name;
  char text[32];
  std::snprintf(text, sizeof(text), "%.3g", err);
  ::testing::Test::RecordProperty("max_abs_error", text);
  std::printf("[ %s ] max |fedpeft - numpy| = %s over %lld x %lld logits\n",
              name.c_str(), text, static_cast<long long>(got.size(0)),
              static_cast<long long>(got.size(1)));
}

// Generation (KV cache, positions from cache->length) gives the same
// logits: a prefix, then one token at a time. Not for dynamic scaling,
// whose cached keys keep the rotation of the shorter forward they came
// from (as in transformers).
TEST_P(ArchReferenceTest, IncrementalDecodingMatchesNumpy) {
  const std::string name = GetParam();
  if (name == "dynamic") GTEST_SKIP() << "dynamic: depends on forward length";
  const Fixture f = LoadFixture(name);
  ASSERT_TRUE(f.logits.defined());
  auto weights = Load(kArchDir + name);
  ASSERT_TRUE(weights);
  torch::NoGradGuard no_grad;
  LlamaModel model(weights);
  KvCache cache;
  const int64_t prefix = 40;
  std::vector<torch::Tensor> rows = {model.Forward(
      test::Tokens({f.ids.begin(), f.ids.begin() + prefix}), &cache)[0]};
  for (size_t t = prefix; t < f.ids.size(); ++t) {
    rows.push_back(model.Forward(test::Tokens({f.ids[t]}), &cache)[0]);
  }
  const double err = test::MaxAbsDiff(torch::cat(rows), f.logits);
  EXPECT_LE(err, kReferenceTol) << name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ArchReferenceTest,
                         ::testing::Values("llama3", "qwen3", "yarn", "linear",
                                           "dynamic"),
                         [](const auto& info) { return info.param; });

// The scaled fixtures exercise their scaling: the same checkpoint read with
// rope_scaling removed is far from the reference (so a forward that ignored
// the scaling could not pass LogitsMatchNumpy).
TEST(ArchReferenceFixtureTest, ScalingChangesTheLogits) {
  const std::filesystem::path tmp =
      std::filesystem::temp_directory_path() /
      ("fedpeft_arch_noscale_" + std::to_string(::getpid()));
  for (const std::string name : {"llama3", "yarn", "linear", "dynamic"}) {
    const Fixture f = LoadFixture(name);
    ASSERT_TRUE(f.logits.defined());
    const std::filesystem::path dir = tmp / name;
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(
        kArchDir + name + "/model.safetensors", dir / "model.safetensors",
        std::filesystem::copy_options::overwrite_existing);
    auto text = ReadFileToString(kArchDir + name + "/config.json");
    ASSERT_TRUE(text.ok());
    nlohmann::json config = nlohmann::json::parse(*text);
    ASSERT_FALSE(config.at("rope_scaling").is_null()) << name;
    config["rope_scaling"] = nullptr;
    config["max_position_embeddings"] = 1024;  // dynamic: room for 80
    ASSERT_TRUE(
        WriteFileAtomic((dir / "config.json").string(), config.dump()).ok());
    const torch::Tensor plain = Logits(dir.string(), f.ids);
    ASSERT_TRUE(plain.defined());
    EXPECT_GT(test::MaxAbsDiff(plain, f.logits), 0.05) << name;
  }
  std::filesystem::remove_all(tmp);
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
