// LlamaConfig: validation, config.json parsing and the errors of folders
// whose config the loader refuses (split from llama_test.cc).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/config.h"
#include "tests/model/llama_test_util.h"

namespace fedpeft {
namespace model {
namespace {

using ::testing::HasSubstr;
using namespace test;  // NOLINT(build/namespaces)

TEST(LlamaTest, ConfigValidateNamesEveryBadField) {
  LlamaConfig c;
  c.dim = 0;
  c.hidden_dim = 10;
  c.n_layers = 1;
  c.n_heads = 4;
  c.n_kv_heads = 3;
  c.vocab_size = 10;
  c.eos_id = 10;
  Status s = c.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("dim: must be >= 1, got 0"));
  EXPECT_THAT(s.message(), HasSubstr("n_kv_heads: must divide n_heads (4)"));
  EXPECT_THAT(s.message(), HasSubstr("eos_id"));

  c.dim = 12;  // head_dim 3: odd
  c.n_kv_heads = 2;
  c.eos_id = 2;
  s = c.Validate();
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("head_dim"));
  c.dim = 10;
  s = c.Validate();
  EXPECT_THAT(s.message(), HasSubstr("dim: must be a multiple of n_heads"));
  c.dim = 16;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate().ToString();

  auto w = LoadOrDie(kHfDir);
  ASSERT_TRUE(w);
  EXPECT_EQ(
      w->config.NumParameters(),
      512 * 64 + 64 + 5 * (2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64));
}

TEST(LlamaTest, UnsupportedArchitectureNamesTheKey) {
  auto text = ReadFileToString(kHfDir + "/config.json");
  ASSERT_TRUE(text.ok());
  const nlohmann::json base = nlohmann::json::parse(*text);
  struct Case {
    std::string key;
    nlohmann::json value;
  };
  const std::vector<Case> cases = {
      {"model_type", "gpt2"},
      {"hidden_act", "gelu"},
      {"rope_scaling", {{"type", "longrope"}, {"factor", 2.0}}},
      {"attention_bias", true},
      {"mlp_bias", true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    TempDir dir;
    nlohmann::json j = base;
    j[c.key] = c.value;
    WriteHfFolder(dir, ShippedTensors(), j.dump());
    auto r = LoadModel(dir.path());
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
    EXPECT_THAT(r.status().message(), HasSubstr("config.json"));
    // 'rope_scaling.type' for the nested key.
    EXPECT_THAT(r.status().message(), HasSubstr("'" + c.key));
  }
  // A missing required key is named too.
  nlohmann::json j = base;
  j.erase("num_hidden_layers");
  auto r = LlamaConfig::FromHfJson(j, "my/config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("my/config.json"));
  EXPECT_THAT(r.status().message(), HasSubstr("'num_hidden_layers'"));
}

TEST(LlamaTest, ParseHfConfigReadsTheTextLoadHfModelReads) {
  auto text = ReadFileToString(kHfDir + "/config.json");
  ASSERT_TRUE(text.ok());
  auto config = ParseHfConfig(*text, "my/config.json");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->dim, 64);
  EXPECT_EQ(config->n_kv_heads, 4);

  auto bad = ParseHfConfig("{\"model_type\": ", "my/config.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("my/config.json: not valid"));
  // 2^64 - 1 is an integer to nlohmann; as an int64 it would wrap to -1,
  // "no token".
  bad = ParseHfConfig(ShippedConfigWith("bos_token_id", ~uint64_t{0}), "c");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(),
              HasSubstr("'bos_token_id' is 18446744073709551615, expected"));
  // A nested value is described, not dumped: dump() recurses once per level.
  std::string deep = ShippedConfigWith("hidden_size", "deep");
  deep.replace(deep.find("\"deep\""), 6,
               std::string(100000, '[') + std::string(100000, ']'));
  bad = ParseHfConfig(deep, "c");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(),
              HasSubstr("'hidden_size' is an array of 1 nested entries"));
}

TEST(LlamaTest, HfLayerCountTheWeightsCannotHoldIsRefusedBeforeSizing) {
  // Every per-layer name and shape would be built from this count first.
  TempDir dir;
  WriteHfFolder(dir, ShippedTensors(),
                ShippedConfigWith("num_hidden_layers", 1'000'000'000'000));
  auto r = LoadHfModel(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr(dir.File("config.json")));
  EXPECT_THAT(r.status().message(),
              HasSubstr("num_hidden_layers is 1000000000000, but the weights "
                        "hold 47 tensors, fewer than the 9 per layer"));
  EXPECT_THAT(r.status().message(), HasSubstr("maybe wrong base model?"));
}

TEST(LlamaTest, HfContextBeyondTheLimitIsRefused) {
  // LlamaModel would allocate rotary tables for the whole context.
  TempDir dir;
  WriteHfFolder(dir, ShippedTensors(),
                ShippedConfigWith("max_position_embeddings", int64_t{1} << 40));
  auto r = LoadHfModel(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr(dir.File("config.json")));
  EXPECT_THAT(r.status().message(), HasSubstr("max_seq_len: must be <= " +
                                              std::to_string(kMaxModelSeqLen)));
  EXPECT_THAT(r.status().message(), HasSubstr("got 1099511627776"));
}

TEST(LlamaTest, HfOversizeConfigIsRefusedUnread) {
  TempDir dir;
  WriteHfFolder(dir, ShippedTensors());
  std::filesystem::resize_file(dir.File("config.json"),
                               kMaxConfigFileBytes + 1);  // a hole, no disk
  auto r = LoadHfModel(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(),
              HasSubstr(dir.File("config.json") + "' is " +
                        std::to_string(kMaxConfigFileBytes + 1) +
                        " bytes, more than the limit of " +
                        std::to_string(kMaxConfigFileBytes)));
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
