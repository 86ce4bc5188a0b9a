// config.json of today's models: the real configs of Llama-3.2-1B,
// Qwen2.5-0.5B, Qwen3-0.6B and SmolLM2-135M (assets/configs/), rope_scaling
// parsing and its errors, Qwen3's head_dim and q/k norms, refused
// architectures, and random-weight checkpoints built from the real configs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/random_model.h"
#include "model/rope.h"
#include "tests/model/llama_test_util.h"

namespace fedpeft {
namespace model {
namespace {

using ::testing::HasSubstr;
using namespace test;  // NOLINT(build/namespaces)

const std::string kConfigs =
    std::string(FEDPEFT_SOURCE_DIR) + "/assets/configs/";
const std::vector<std::string> kRealModels = {"llama-3.2-1b", "qwen2.5-0.5b",
                                              "qwen3-0.6b", "smollm2-135m"};

nlohmann::json RealJson(const std::string& model) {
  auto text = ReadFileToString(kConfigs + model + "/config.json");
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return nlohmann::json::parse(text.ok() ? *text : "{}");
}

StatusOr<LlamaConfig> Parse(const nlohmann::json& j) {
  return LlamaConfig::FromHfJson(j, "my/config.json");
}

TEST(ArchConfigTest, RealConfigsParseWithTheirPublishedShapes) {
  auto llama = Parse(RealJson("llama-3.2-1b"));
  ASSERT_TRUE(llama.ok()) << llama.status().ToString();
  EXPECT_EQ(llama->model_type, "llama");
  EXPECT_EQ(llama->head_dim(), 64);
  EXPECT_EQ(llama->explicit_head_dim, 0);  // 64 = 2048 / 32: not explicit
  EXPECT_EQ(llama->rope_theta, 500000.0);
  EXPECT_EQ(llama->rope_scaling.type, "llama3");
  EXPECT_EQ(llama->rope_scaling.factor, 32.0);
  EXPECT_EQ(llama->rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(llama->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(llama->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_TRUE(llama->tie_embeddings);
  EXPECT_EQ(llama->NumParameters(), 1235814400);  // Llama-3.2-1B: 1.24B

  auto qwen3 = Parse(RealJson("qwen3-0.6b"));
  ASSERT_TRUE(qwen3.ok()) << qwen3.status().ToString();
  EXPECT_TRUE(qwen3->qk_norm);
  EXPECT_FALSE(qwen3->qkv_bias);
  EXPECT_EQ(qwen3->head_dim(), 128);
  EXPECT_EQ(qwen3->q_dim(), 2048);  // != hidden_size 1024
  EXPECT_EQ(qwen3->kv_dim(), 1024);
  EXPECT_EQ(qwen3->norm_eps, 1e-6);
  const auto shapes = ExpectedTensorShapes(*qwen3);
  EXPECT_EQ(shapes.at("model.layers.0.self_attn.q_proj.weight"),
            (std::vector<int64_t>{2048, 1024}));
  EXPECT_EQ(shapes.at("model.layers.0.self_attn.o_proj.weight"),
            (std::vector<int64_t>{1024, 2048}));
  EXPECT_EQ(shapes.at("model.layers.27.self_attn.q_norm.weight"),
            (std::vector<int64_t>{128}));
  EXPECT_EQ(shapes.at("model.layers.27.self_attn.k_norm.weight"),
            (std::vector<int64_t>{128}));
  EXPECT_EQ(qwen3->NumParameters(), 596049920);  // Qwen3-0.6B: 0.6B

  auto qwen25 = Parse(RealJson("qwen2.5-0.5b"));
  ASSERT_TRUE(qwen25.ok()) << qwen25.status().ToString();
  EXPECT_TRUE(qwen25->qkv_bias);
  EXPECT_EQ(qwen25->max_seq_len, 32768);          // use_sliding_window: false
  EXPECT_EQ(qwen25->NumParameters(), 494032768);  // Qwen2.5-0.5B: 0.49B

  auto smol = Parse(RealJson("smollm2-135m"));
  ASSERT_TRUE(smol.ok()) << smol.status().ToString();
  EXPECT_EQ(smol->head_dim(), 64);
  EXPECT_EQ(smol->NumParameters(), 134515008);  // SmolLM2-135M
}

TEST(ArchConfigTest, ToHfJsonRoundTrips) {
  std::vector<nlohmann::json> configs;
  for (const std::string& m : kRealModels) configs.push_back(RealJson(m));
  nlohmann::json yarn = RealJson("qwen2.5-0.5b");
  yarn["rope_scaling"] = {{"type", "yarn"},
                          {"factor", 4.0},
                          {"original_max_position_embeddings", 8192},
                          {"beta_fast", 16},
                          {"attention_factor", 1.2},
                          {"truncate", false}};
  configs.push_back(yarn);
  nlohmann::json dynamic = RealJson("smollm2-135m");
  dynamic["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  configs.push_back(dynamic);
  nlohmann::json linear = RealJson("smollm2-135m");
  linear["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  configs.push_back(linear);
  for (const nlohmann::json& j : configs) {
    auto c = Parse(j);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    const nlohmann::json out = c->ToHfJson();
    SCOPED_TRACE(out.dump());
    EXPECT_EQ(out.at("model_type"), j.at("model_type"));
    auto back = LlamaConfig::FromHfJson(out, "exported");
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_EQ(back->ToHfJson(), out);
    EXPECT_EQ(back->rope_scaling.type, c->rope_scaling.type);
    EXPECT_EQ(back->explicit_head_dim, c->explicit_head_dim);
    EXPECT_EQ(back->qk_norm, c->qk_norm);
    EXPECT_EQ(back->qkv_bias, c->qkv_bias);
  }
  EXPECT_EQ(Parse(RealJson("qwen3-0.6b"))->ToHfJson().at("head_dim"), 128);
  EXPECT_EQ(Parse(RealJson("qwen3-0.6b"))->ToHfJson().at("architectures")[0],
            "Qwen3ForCausalLM");
}

TEST(ArchConfigTest, RopeTypeAndTypeSpellingsAgree) {
  nlohmann::json a = RealJson("llama-3.2-1b");
  nlohmann::json b = a;
  b["rope_scaling"].erase("rope_type");
  b["rope_scaling"]["type"] = "llama3";
  auto ca = Parse(a), cb = Parse(b);
  ASSERT_TRUE(ca.ok() && cb.ok());
  EXPECT_EQ(ca->ToHfJson(), cb->ToHfJson());
  // rope_type wins over type, as in transformers; "default" is none.
  b["rope_scaling"]["rope_type"] = "default";
  auto none = Parse(b);
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_FALSE(none->rope_scaling.enabled());
}

TEST(ArchConfigTest, UnknownRopeScalingTypeNamesFileKeyAndSupportedValues) {
  for (const char* key : {"rope_type", "type"}) {
    nlohmann::json j = RealJson("llama-3.2-1b");
    j["rope_scaling"] = {{key, "longrope"}, {"factor", 4.0}};
    auto r = Parse(j);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
    EXPECT_THAT(r.status().message(),
                HasSubstr("my/config.json: key 'rope_scaling." +
                          std::string(key) + "' is \"longrope\""));
    EXPECT_THAT(r.status().message(),
                HasSubstr("\"linear\", \"dynamic\", \"yarn\", \"llama3\""));
  }
}

TEST(ArchConfigTest, BadRopeScalingFieldsAreNamed) {
  nlohmann::json j = RealJson("llama-3.2-1b");
  j["rope_scaling"].erase("low_freq_factor");
  auto r = Parse(j);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("key 'rope_scaling.low_freq_factor' is missing "
                        "(required for rope_type \"llama3\")"));

  j = RealJson("llama-3.2-1b");
  j["rope_scaling"]["high_freq_factor"] = 0.5;
  j["rope_scaling"]["factor"] = -1;
  r = Parse(j);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("rope_scaling.factor: must be > 0"));
  EXPECT_THAT(r.status().message(),
              HasSubstr("rope_scaling.high_freq_factor: must be > "
                        "low_freq_factor (1), got 0.5"));

  j = RealJson("llama-3.2-1b");
  j["rope_scaling"]["factor"] = "32";
  r = Parse(j);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("key 'rope_scaling.factor' is \"32\", expected a "
                        "number"));
}

TEST(ArchConfigTest, UnsupportedModelTypesNameTheSupportedList) {
  for (const char* type : {"gemma2", "gemma3_text", "phi3", "gpt2"}) {
    nlohmann::json j = RealJson("qwen3-0.6b");
    j["model_type"] = type;
    auto r = Parse(j);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
    EXPECT_THAT(
        r.status().message(),
        HasSubstr("my/config.json: key 'model_type' is \"" + std::string(type) +
                  "\", expected one of \"llama\", "
                  "\"mistral\", \"qwen2\", \"qwen3\""));
  }
}

TEST(ArchConfigTest, Qwen2SlidingWindowCapsTheContext) {
  // Within the window, sliding and full attention layers compute the same.
  nlohmann::json j = RealJson("qwen2.5-0.5b");
  j["use_sliding_window"] = true;
  j["sliding_window"] = 4096;
  auto c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->max_seq_len, 4096);
}

TEST(ArchConfigTest, RopeFrequenciesOfEachType) {
  RopeScaling none;
  auto plain = ComputeRopeFrequencies(none, 8, 10000.0, 64, 64);
  ASSERT_EQ(plain.inv_freq.size(), 4u);
  EXPECT_DOUBLE_EQ(plain.inv_freq[1], 0.1);  // 10000^(-2/8)
  EXPECT_EQ(plain.attention_factor, 1.0);

  RopeScaling linear;
  linear.type = "linear";
  linear.factor = 4;
  EXPECT_DOUBLE_EQ(ComputeRopeFrequencies(linear, 8, 1e4, 64, 64).inv_freq[1],
                   0.025);

  RopeScaling dynamic;
  dynamic.type = "dynamic";
  dynamic.factor = 2;
  // Up to max_position_embeddings: plain; beyond: the base grows.
  EXPECT_EQ(ComputeRopeFrequencies(dynamic, 8, 1e4, 64, 64).inv_freq,
            plain.inv_freq);
  const double base = 1e4 * std::pow(2.0 * 128 / 64 - 1, 8.0 / 6.0);
  EXPECT_DOUBLE_EQ(ComputeRopeFrequencies(dynamic, 8, 1e4, 64, 128).inv_freq[1],
                   std::pow(base, -0.25));

  RopeScaling yarn;
  yarn.type = "yarn";
  yarn.factor = 4;
  EXPECT_DOUBLE_EQ(
      ComputeRopeFrequencies(yarn, 16, 1e4, 32, 32).attention_factor,
      0.1 * std::log(4.0) + 1.0);
  // With original_max_position_embeddings, transformers takes the factor
  // from the length ratio: 64 / 32 = 2.
  yarn.original_max_position_embeddings = 32;
  EXPECT_DOUBLE_EQ(
      ComputeRopeFrequencies(yarn, 16, 1e4, 64, 64).attention_factor,
      0.1 * std::log(2.0) + 1.0);
}

// A random checkpoint from each real config, shrunk, loads and runs; the
// shrunk config keeps the family's features (rope scaling, head_dim, norms,
// biases).
TEST(ArchConfigTest, ShrunkRandomCheckpointsOfRealConfigsLoadAndRun) {
  for (const std::string& m : kRealModels) {
    SCOPED_TRACE(m);
    auto full = Parse(RealJson(m));
    ASSERT_TRUE(full.ok()) << full.status().ToString();
    ModelShape shape;
    shape.layers = 2;
    shape.hidden = 64;
    shape.heads = 4;
    shape.kv_heads = 2;
    shape.intermediate = 96;
    shape.vocab = 128;
    shape.max_positions = 512;
    if (full->explicit_head_dim > 0) shape.head_dim = 32;  // != 64 / 4
    auto small = ReshapeConfig(*full, shape);
    ASSERT_TRUE(small.ok()) << small.status().ToString();
    TempDir dir;
    ASSERT_TRUE(WriteRandomHfModel(*small, 7, dir.path()).ok());
    auto w = LoadHfModel(dir.path());
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    const LlamaConfig& c = (*w)->config;
    EXPECT_EQ(c.ToHfJson(), small->ToHfJson());
    EXPECT_EQ(c.rope_scaling.type, full->rope_scaling.type);
    EXPECT_EQ(c.qk_norm, full->qk_norm);
    EXPECT_EQ(c.qkv_bias, full->qkv_bias);
    // Ids beyond the shrunk vocabulary become none (SmolLM2's 0 stays).
    EXPECT_EQ(c.bos_id, full->bos_id < 128 ? full->bos_id : -1);
    torch::NoGradGuard no_grad;
    LlamaModel model(*w);
    torch::Tensor logits =
        model.Forward(torch::arange(100, torch::kInt64).view({1, -1}));
    EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{1, 100, 128}));
    EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  }
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
