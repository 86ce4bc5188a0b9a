// Tests of peft/: LoRA and bottleneck adapters on the shipped stories260K
// model (5 layers, dim 64, 8 heads / 4 KV heads, hidden 172), and their
// Hugging Face PEFT import/export.
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
namespace {

using ::testing::HasSubstr;

const std::string kModelDir =
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
  static std::shared_ptr<const model::LlamaWeights>* base_;
};

std::shared_ptr<const model::LlamaWeights>* PeftTest::base_ = nullptr;

PeftOptions LoraOpts(std::vector<std::string> targets = {"q_proj", "k_proj",
                                                         "v_proj", "o_proj"},
                     int r = 8) {
  PeftOptions o;
  o.method = "lora";
  o.lora.r = r;
  o.lora.alpha = 16;
  o.lora.target_modules = std::move(targets);
  return o;
}

PeftOptions BottleneckOpts(int dim = 8) {
  PeftOptions o;
  o.method = "bottleneck";
  o.bottleneck.bottleneck_dim = dim;
  o.bottleneck.activation = "gelu";
  return o;
}

// ---------------------------------------------------------------- LoRA math

TEST(LoraLinearTest, ForwardEqualsDenseDeltaAndScales) {
  LoraLinear lora({/*in=*/12, /*out=*/10, /*r=*/4}, /*alpha=*/8,
                  /*dropout=*/0, /*use_rslora=*/false, /*init_seed=*/3);
  EXPECT_DOUBLE_EQ(lora.scale(), 2.0);
  {
    torch::NoGradGuard no_grad;
    lora.lora_B().normal_();
  }
  torch::Tensor x = torch::randn({2, 5, 12});
  torch::Tensor dense = torch::matmul(x, lora.DeltaWeight().t());
  EXPECT_TRUE(torch::allclose(lora.Forward(x), dense, 1e-5, 1e-5));
  EXPECT_TRUE(torch::allclose(lora.DeltaWeight(),
                              2.0 * torch::matmul(lora.lora_B(), lora.lora_A()),
                              1e-6, 1e-6));

  LoraLinear rs({12, 10, 4}, 8, 0, /*use_rslora=*/true, 3);
  EXPECT_DOUBLE_EQ(rs.scale(), 8.0 / 2.0);
}

TEST(LoraLinearTest, DropoutOnlyWhileTraining) {
  LoraLinear lora({32, 16, 4}, 8, /*dropout=*/0.5, false, 3);
  {
    torch::NoGradGuard no_grad;
    lora.lora_B().normal_();
  }
  torch::Tensor x = torch::ones({4, 32});
  lora.eval();
  torch::Tensor eval_out = lora.Forward(x);
  EXPECT_TRUE(torch::equal(eval_out, lora.Forward(x)));
  lora.train();
  EXPECT_FALSE(torch::allclose(lora.Forward(x), eval_out));
}

TEST_F(PeftTest, FreshLoraGivesBaseLogitsUntilBChanges) {
  auto m = Make(LoraOpts());
  ASSERT_NE(m, nullptr);
  m->Train(false);
  EXPECT_TRUE(torch::equal(Logits(*m), base_logits_));

  at::Generator gen = at::detail::createCPUGenerator(7);
  {
    torch::NoGradGuard no_grad;
    for (auto& [key, t] : m->AdapterTensors()) {
      if (key.find("lora_B") != std::string::npos) {
        t.copy_(torch::randn(t.sizes(), gen) * 0.1);
      }
    }
  }
  EXPECT_FALSE(torch::allclose(Logits(*m), base_logits_, 1e-4, 1e-4));
}

TEST_F(PeftTest, MergeMatchesUnmergedAndLeavesSharedBaseAlone) {
  auto m =
      Make(LoraOpts({"q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"}));
  ASSERT_NE(m, nullptr);
  Randomize(*m, 11);
  const torch::Tensor q0 =
      base()->Get("model.layers.0.self_attn.q_proj.weight").clone();
  const torch::Tensor unmerged = Logits(*m);
  ASSERT_FALSE(torch::allclose(unmerged, base_logits_, 1e-4, 1e-4));

  ASSERT_TRUE(m->Merge().ok());
  EXPECT_TRUE(m->model().merged());
  EXPECT_TRUE(torch::allclose(Logits(*m), unmerged, 1e-5, 1e-5))
      << (Logits(*m) - unmerged).abs().max().item<float>();
  EXPECT_FALSE(torch::equal(m->model().ProjectionWeight(0, "q_proj"), q0));

  // The shared weights are untouched: a second model over them is the base.
  EXPECT_TRUE(
      torch::equal(base()->Get("model.layers.0.self_attn.q_proj.weight"), q0));
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(torch::equal(model::LlamaModel(base()).Forward(Tokens()),
                             base_logits_));
  }

  ASSERT_TRUE(m->Unmerge().ok());
  EXPECT_FALSE(m->model().merged());
  EXPECT_TRUE(torch::allclose(Logits(*m), unmerged, 1e-6, 1e-6));
}

TEST_F(PeftTest, OnlyAdapterParametersGetGradients) {
  PeftOptions options = LoraOpts(model::ProjectionNames(), 4);
  auto m = Make(options);
  ASSERT_NE(m, nullptr);
  m->Train(true);
  torch::Tensor tokens = Tokens();
  torch::Tensor logits = m->model().Forward(tokens);
  torch::Tensor loss = torch::nn::functional::cross_entropy(
      logits.slice(1, 0, -1).reshape({-1, logits.size(-1)}),
      tokens.slice(1, 1).reshape({-1}));
  loss.backward();

  std::vector<torch::Tensor> params = m->TrainableParameters();
  TensorMap adapter = m->AdapterTensors();
  ASSERT_EQ(params.size(), adapter.size());
  for (auto& [key, t] : adapter) {
    ASSERT_TRUE(t.requires_grad()) << key;
    ASSERT_TRUE(t.grad().defined()) << key;
    // With B = 0 only B's gradient is non-zero (dL/dA is scaled by B).
    if (key.find("lora_B") != std::string::npos) {
      EXPECT_GT(t.grad().abs().sum().item<double>(), 0) << key;
    }
  }
  for (const auto& [name, w] : base()->tensors) {
    EXPECT_FALSE(w.requires_grad()) << name;
    EXPECT_FALSE(w.grad().defined()) << name;
  }

  // Sum over layers and projections of r * (in + out).
  const model::LlamaConfig& c = base()->config;
  const int64_t kv = c.n_kv_heads * c.head_dim();
  const int64_t per_layer =
      4 * ((c.dim + c.dim) + (c.dim + kv) + (c.dim + kv) + (c.dim + c.dim) +
           (c.dim + c.hidden_dim) * 2 + (c.hidden_dim + c.dim));
  EXPECT_EQ(m->NumTrainableParameters(), c.n_layers * per_layer);
  EXPECT_EQ(m->NumTrainableParameters(),
            5 * 4 * (128 + 96 + 96 + 128 + 236 * 3));
}

TEST_F(PeftTest, InitIsKaimingUniformAndDeterministic) {
  auto a = Make(LoraOpts(model::ProjectionNames()), 42);
  auto same = Make(LoraOpts(model::ProjectionNames()), 42);
  auto other = Make(LoraOpts(model::ProjectionNames()), 43);
  ASSERT_TRUE(a && same && other);
  TensorMap ta = a->AdapterTensors();
  TensorMap ts = same->AdapterTensors();
  TensorMap to = other->AdapterTensors();
  ASSERT_EQ(ta.size(), 5u * 7 * 2);
  std::set<double> distinct_first;
  for (const auto& [key, t] : ta) {
    if (key.find("lora_B") != std::string::npos) {
      EXPECT_EQ(t.abs().max().item<float>(), 0.0f) << key;
      continue;
    }
    // kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + 5) * in)).
    const double bound = std::sqrt(6.0 / (6.0 * t.size(1)));
    const double max = t.abs().max().item<double>();
    EXPECT_LE(max, bound) << key;
    EXPECT_GT(max, 0.8 * bound) << key;  // really spread over the range
    EXPECT_NEAR(t.mean().item<double>(), 0.0, bound / 4) << key;
    EXPECT_TRUE(torch::equal(t, ts.at(key))) << key;
    EXPECT_FALSE(torch::equal(t, to.at(key))) << key;
    distinct_first.insert(t.view(-1)[0].item<double>());
  }
  EXPECT_EQ(distinct_first.size(), 5u * 7);  // every module its own stream
}

TEST_F(PeftTest, RankPatternAndLayersToTransform) {
  PeftOptions o = LoraOpts({"q_proj", "v_proj", "down_proj"}, 8);
  o.lora.layers_to_transform = {3, 1};
  o.lora.rank_pattern = {{"v_proj", 2}, {"1.self_attn.q_proj", 4}};
  o.lora.alpha_pattern = {{"down_proj", 4.0}};

  EXPECT_EQ(RankFor(o.lora, "model.layers.1.self_attn.q_proj"), 4);
  // Matches only on a dot boundary: "...layers.11.self_attn.q_proj" is not
  // "...layers.1.self_attn.q_proj".
  EXPECT_EQ(RankFor(o.lora, "model.layers.11.self_attn.q_proj"), 8);
  EXPECT_EQ(RankFor(o.lora, "model.layers.3.self_attn.v_proj"), 2);
  EXPECT_EQ(RankFor(o.lora, "model.layers.3.self_attn.q_proj"), 8);
  // The longest matching key wins.
  o.lora.rank_pattern["layers.1.self_attn.v_proj"] = 6;
  EXPECT_EQ(RankFor(o.lora, "model.layers.1.self_attn.v_proj"), 6);
  EXPECT_DOUBLE_EQ(AlphaFor(o.lora, "model.layers.1.mlp.down_proj"), 4.0);
  EXPECT_DOUBLE_EQ(AlphaFor(o.lora, "model.layers.1.self_attn.q_proj"), 16.0);

  auto m = Make(o);
  ASSERT_NE(m, nullptr);
  TensorMap t = m->AdapterTensors();
  EXPECT_EQ(t.size(), 2u * 3 * 2);
  for (const auto& [key, v] : t) {
    EXPECT_TRUE(key.find("layers.1.") != std::string::npos ||
                key.find("layers.3.") != std::string::npos)
        << key;
  }
  const std::string p = "base_model.model.model.layers.";
  EXPECT_EQ(t.at(p + "1.self_attn.q_proj.lora_A.weight").sizes(),
            (std::vector<int64_t>{4, 64}));
  EXPECT_EQ(t.at(p + "3.self_attn.q_proj.lora_A.weight").sizes(),
            (std::vector<int64_t>{8, 64}));
  EXPECT_EQ(t.at(p + "1.self_attn.v_proj.lora_B.weight").sizes(),
            (std::vector<int64_t>{32, 6}));
  EXPECT_EQ(t.at(p + "3.self_attn.v_proj.lora_B.weight").sizes(),
            (std::vector<int64_t>{32, 2}));
  EXPECT_EQ(t.at(p + "3.mlp.down_proj.lora_A.weight").sizes(),
            (std::vector<int64_t>{8, 172}));
  EXPECT_EQ(m->model().GetLinearDelta(0, "q_proj"), nullptr);
  auto down = std::dynamic_pointer_cast<LoraLinear>(
      m->model().GetLinearDelta(3, "down_proj"));
  ASSERT_NE(down, nullptr);
  EXPECT_DOUBLE_EQ(down->scale(), 4.0 / 8);
}

TEST_F(PeftTest, CreateRejectsBadOptions) {
  PeftOptions o = LoraOpts();
  o.lora.layers_to_transform = {7};
  auto m = PeftModel::Create(base(), o, 1);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("lora.layers_to_transform"));
  EXPECT_THAT(m.status().message(), HasSubstr("got 7"));

  o = LoraOpts({"q_proj", "lm_head"});
  o.lora.r = 0;
  o.lora.dropout = 1.0;
  m = PeftModel::Create(base(), o, 1);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("lora.r: must be >= 1, got 0"));
  EXPECT_THAT(m.status().message(), HasSubstr("lora.dropout"));
  EXPECT_THAT(m.status().message(), HasSubstr("'lm_head'"));
}

TEST_F(PeftTest, LoadAdapterTensorsValidatesKeysAndShapes) {
  auto m = Make(LoraOpts({"q_proj"}));
  ASSERT_NE(m, nullptr);
  const std::string a =
      "base_model.model.model.layers.0.self_attn.q_proj."
      "lora_A.weight";
  TensorMap bad{{a, torch::zeros({8, 32})}};
  Status s = m->LoadAdapterTensors(bad, /*allow_partial=*/true);
  EXPECT_THAT(s.message(), HasSubstr(a));
  EXPECT_THAT(s.message(), HasSubstr("[8, 32]"));
  EXPECT_THAT(s.message(), HasSubstr("[8, 64]"));
  EXPECT_THAT(s.message(), HasSubstr("maybe wrong base model?"));

  s = m->LoadAdapterTensors(
      {{"model.layers.0.q_proj.lora_A", torch::zeros({8, 64})}}, true);
  EXPECT_THAT(s.message(), HasSubstr("unknown key"));

  s = m->LoadAdapterTensors({{a, torch::ones({8, 64})}}, false);
  EXPECT_THAT(s.message(), HasSubstr("missing"));

  ASSERT_TRUE(m->LoadAdapterTensors({{a, torch::ones({8, 64})}}, true).ok());
  EXPECT_TRUE(torch::equal(m->AdapterTensors().at(a), torch::ones({8, 64})));
}

// ------------------------------------------------------------------ PEFT IO

TEST_F(PeftTest, SaveLoadRoundTripWithHeterogeneousRanks) {
  // Ranks differ by module (v_proj 4, others 8) but the options passed to
  // SaveAdapter say r = 8 everywhere: the saved config must carry a
  // rank_pattern derived from the tensors.
  PeftOptions created = LoraOpts({"q_proj", "v_proj"});
  created.lora.rank_pattern = {{"v_proj", 4}};
  auto m = Make(created);
  ASSERT_NE(m, nullptr);
  Randomize(*m, 5);
  m->Train(false);
  const torch::Tensor logits = Logits(*m);

  const std::string dir = TempDir("adapter");
  Status s = SaveAdapter(dir, LoraOpts({"q_proj", "v_proj"}),
                         m->AdapterTensors(), "stories260K");
  ASSERT_TRUE(s.ok()) << s.ToString();

  nlohmann::json j = ReadJson(dir + "/adapter_config.json");
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["r"], 8);
  EXPECT_EQ(j["lora_alpha"], 16);
  EXPECT_EQ(j["lora_dropout"], 0.0);
  EXPECT_EQ(j["target_modules"], nlohmann::json::array({"q_proj", "v_proj"}));
  EXPECT_EQ(j["bias"], "none");
  EXPECT_EQ(j["base_model_name_or_path"], "stories260K");
  EXPECT_TRUE(j["layers_to_transform"].is_null());
  EXPECT_EQ(j["use_rslora"], false);
  EXPECT_EQ(j["fan_in_fan_out"], false);
  ASSERT_EQ(j["rank_pattern"].size(), 5u) << j.dump();
  EXPECT_EQ(j["rank_pattern"]["model.layers.2.self_attn.v_proj"], 4);
  EXPECT_EQ(j["alpha_pattern"], nlohmann::json::object());

  auto file = model::ReadSafetensors(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  TensorMap live = m->AdapterTensors();
  ASSERT_EQ(file->tensors.size(), live.size());
  for (const auto& [key, t] : file->tensors) {
    ASSERT_TRUE(live.count(key)) << key;
    EXPECT_EQ(t.scalar_type(), torch::kFloat32) << key;
    EXPECT_TRUE(torch::equal(t, live.at(key))) << key;
  }
  EXPECT_TRUE(file->tensors.count(
      "base_model.model.model.layers.4.self_attn.v_proj.lora_B.weight"));

  auto saved = LoadAdapter(dir);
  ASSERT_TRUE(saved.ok()) << saved.status().ToString();
  EXPECT_EQ(saved->base_model, "stories260K");
  EXPECT_EQ(saved->options.lora.r, 8);
  EXPECT_EQ(RankFor(saved->options.lora, "model.layers.0.self_attn.v_proj"), 4);

  auto loaded = LoadPeftModel(base(), dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  for (const auto& [key, t] : (*loaded)->AdapterTensors()) {
    EXPECT_TRUE(torch::equal(t, live.at(key))) << key;
  }
  EXPECT_TRUE(torch::equal(Logits(**loaded), logits));
}

TEST_F(PeftTest, SaveKeepsUserRankPatternWhenTensorsAgree) {
  PeftOptions o = LoraOpts({"q_proj", "v_proj"});
  o.lora.rank_pattern = {{"v_proj", 4}};
  o.lora.layers_to_transform = {0, 2};
  o.lora.use_rslora = true;
  auto m = Make(o);
  ASSERT_NE(m, nullptr);
  const std::string dir = TempDir("adapter");
  ASSERT_TRUE(SaveAdapter(dir, o, m->AdapterTensors(), kModelDir).ok());
  nlohmann::json j = ReadJson(dir + "/adapter_config.json");
  EXPECT_EQ(j["rank_pattern"], nlohmann::json({{"v_proj", 4}}));
  EXPECT_EQ(j["layers_to_transform"], nlohmann::json::array({0, 2}));
  EXPECT_EQ(j["use_rslora"], true);
  auto loaded = LoadPeftModel(base(), dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->options().lora.layers_to_transform,
            (std::vector<int>{0, 2}));
  EXPECT_TRUE((*loaded)->options().lora.use_rslora);
}

TEST(AdapterConfigTest, JsonRoundTripForBothMethods) {
  PeftOptions lora = LoraOpts({"q_proj", "down_proj"}, 4);
  lora.lora.alpha = 6.5;
  lora.lora.dropout = 0.05;
  lora.lora.layers_to_transform = {1, 4};
  lora.lora.rank_pattern = {{"down_proj", 2}};
  lora.lora.alpha_pattern = {{"layers.1.self_attn.q_proj", 3}};
  lora.lora.use_rslora = true;
  nlohmann::json j = AdapterConfigToJson(lora, "base");
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["lora_alpha"], 6.5);
  EXPECT_EQ(j["alpha_pattern"]["layers.1.self_attn.q_proj"], 3);
  auto back = AdapterConfigFromJson(j.dump(), "wire");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->method, "lora");
  EXPECT_EQ(back->lora.r, 4);
  EXPECT_DOUBLE_EQ(back->lora.alpha, 6.5);
  EXPECT_DOUBLE_EQ(back->lora.dropout, 0.05);
  EXPECT_EQ(back->lora.target_modules, lora.lora.target_modules);
  EXPECT_EQ(back->lora.layers_to_transform, lora.lora.layers_to_transform);
  EXPECT_EQ(back->lora.rank_pattern, lora.lora.rank_pattern);
  EXPECT_EQ(back->lora.alpha_pattern, lora.lora.alpha_pattern);
  EXPECT_TRUE(back->lora.use_rslora);

  PeftOptions bottleneck = BottleneckOpts(12);
  bottleneck.bottleneck.places = {"mlp"};
  back =
      AdapterConfigFromJson(AdapterConfigToJson(bottleneck, "").dump(), "wire");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->method, "bottleneck");
  EXPECT_EQ(back->bottleneck.bottleneck_dim, 12);
  EXPECT_EQ(back->bottleneck.places, (std::vector<std::string>{"mlp"}));
  EXPECT_EQ(back->bottleneck.activation, "gelu");

  back = AdapterConfigFromJson(R"({"peft_type": "LORA"})", "wire");
  ASSERT_FALSE(back.ok());
  EXPECT_THAT(back.status().message(), HasSubstr("wire: field 'task_type'"));
  j["target_modules"] = {"q_proj", "embed_tokens"};
  back = AdapterConfigFromJson(j.dump(), "wire");
  ASSERT_FALSE(back.ok());
  EXPECT_THAT(back.status().message(), HasSubstr("'embed_tokens'"));
}

class PeftIoRejectTest : public PeftTest {
 protected:
  void SetUp() override {
    PeftTest::SetUp();
    auto m = Make(LoraOpts({"q_proj"}));
    ASSERT_NE(m, nullptr);
    tensors_ = m->AdapterTensors();
    dir_ = TempDir("adapter");
    ASSERT_TRUE(SaveAdapter(dir_, LoraOpts({"q_proj"}), tensors_, "x").ok());
    config_ = ReadJson(dir_ + "/adapter_config.json");
  }

  void WriteTensors(const TensorMap& t) {
    ASSERT_TRUE(
        model::WriteSafetensors(dir_ + "/adapter_model.safetensors", t).ok());
  }

  std::string LoadError() {
    auto r = LoadPeftModel(base(), dir_);
    EXPECT_FALSE(r.ok());
    return r.ok() ? "" : r.status().message();
  }

  TensorMap tensors_;
  std::string dir_;
  nlohmann::json config_;
  const std::string a_ =
      "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight";
  const std::string b_ =
      "base_model.model.model.layers.2.self_attn.q_proj.lora_B.weight";
};

TEST_F(PeftIoRejectTest, MissingConfig) {
  std::filesystem::remove(dir_ + "/adapter_config.json");
  auto r = LoadAdapter(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("adapter_config.json"));
}

TEST_F(PeftIoRejectTest, BadJson) {
  WriteText(dir_ + "/adapter_config.json", "{\"peft_type\": \"LORA\",");
  EXPECT_THAT(LoadError(), HasSubstr("adapter_config.json: not valid JSON"));
}

TEST_F(PeftIoRejectTest, UnknownPeftType) {
  config_["peft_type"] = "IA3";
  WriteText(dir_ + "/adapter_config.json", config_.dump());
  std::string e = LoadError();
  EXPECT_THAT(e, HasSubstr("peft_type"));
  EXPECT_THAT(e, HasSubstr("'IA3'"));
}

TEST_F(PeftIoRejectTest, BadRankAndTaskType) {
  config_["r"] = 0;
  WriteText(dir_ + "/adapter_config.json", config_.dump());
  EXPECT_THAT(LoadError(), HasSubstr("'r': must be >= 1, got 0"));
  config_["r"] = 8;
  config_["task_type"] = "SEQ_CLS";
  WriteText(dir_ + "/adapter_config.json", config_.dump());
  EXPECT_THAT(LoadError(), HasSubstr("expected \"CAUSAL_LM\", got 'SEQ_CLS'"));
}

TEST_F(PeftIoRejectTest, NumbersThatAreNotIntsAreRefusedNotConverted) {
  // nlohmann would truncate 8.5, take true as 1, wrap 2^32 + 1 to 1, and a
  // float beyond the int's range is undefined behavior.
  for (const nlohmann::json& r :
       {nlohmann::json(1e10), nlohmann::json(8.5), nlohmann::json(true),
        nlohmann::json(uint64_t{4294967297})}) {
    SCOPED_TRACE(r.dump());
    config_["r"] = r;
    WriteText(dir_ + "/adapter_config.json", config_.dump());
    EXPECT_THAT(LoadError(),
                HasSubstr("field 'r': expected an integer, got " + r.dump()));
  }
  config_["r"] = 8;
  config_["layers_to_transform"] = {2, 1.5};
  WriteText(dir_ + "/adapter_config.json", config_.dump());
  EXPECT_THAT(LoadError(), HasSubstr("field 'layers_to_transform'"));
}

TEST_F(PeftIoRejectTest, NestedValueIsQuotedBriefly) {
  // dump() of the value would recurse once per level and overflow the stack.
  config_["r"] = "deep";
  std::string text = config_.dump();
  text.replace(text.find("\"deep\""), 6,
               std::string(100000, '[') + std::string(100000, ']'));
  WriteText(dir_ + "/adapter_config.json", text);
  EXPECT_THAT(LoadError(), HasSubstr("got an array of 1 nested entries"));
}

TEST_F(PeftIoRejectTest, RankDisagreesWithConfig) {
  config_["r"] = 4;
  WriteText(dir_ + "/adapter_config.json", config_.dump());
  std::string e = LoadError();
  EXPECT_THAT(e, HasSubstr("adapter_model.safetensors"));
  EXPECT_THAT(e, HasSubstr("rank 8"));
  EXPECT_THAT(e, HasSubstr("r = 4"));
}

TEST_F(PeftIoRejectTest, ShapeFromAnotherBaseModel) {
  tensors_[a_] = torch::zeros({8, 128});  // in = 128: not stories260K
  WriteTensors(tensors_);
  std::string e = LoadError();
  EXPECT_THAT(e, HasSubstr(a_));
  EXPECT_THAT(e, HasSubstr("[8, 128]"));
  EXPECT_THAT(e, HasSubstr("maybe wrong base model?"));
}

TEST_F(PeftIoRejectTest, LayerBeyondBaseModel) {
  config_["layers_to_transform"] = nullptr;
  tensors_["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] =
      torch::zeros({8, 64});
  tensors_["base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight"] =
      torch::zeros({64, 8});
  WriteTensors(tensors_);
  std::string e = LoadError();
  EXPECT_THAT(e, HasSubstr("layer 9"));
  EXPECT_THAT(e, HasSubstr("maybe wrong base model?"));
}

TEST_F(PeftIoRejectTest, MissingLoraB) {
  tensors_.erase(b_);
  WriteTensors(tensors_);
  std::string e = LoadError();
  EXPECT_THAT(e, HasSubstr("adapter_model.safetensors"));
  EXPECT_THAT(e, HasSubstr(b_ + "' is missing"));
  // SaveAdapter refuses the same incomplete pair.
  Status s = SaveAdapter(TempDir("other"), LoraOpts({"q_proj"}), tensors_, "");
  EXPECT_THAT(s.message(), HasSubstr("A/B pairs must be complete"));
}

TEST_F(PeftIoRejectTest, UnknownKey) {
  tensors_["base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight"] =
      torch::zeros({8, 64});
  WriteTensors(tensors_);
  std::string e = LoadError();
  EXPECT_THAT(e, HasSubstr("lora_C"));
  EXPECT_THAT(e, HasSubstr("does not match the PEFT LoRA key pattern"));
}

TEST_F(PeftIoRejectTest, ModuleNotInTargets) {
  tensors_["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"] =
      torch::zeros({8, 64});
  tensors_["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"] =
      torch::zeros({32, 8});
  WriteTensors(tensors_);
  EXPECT_THAT(LoadError(), HasSubstr("'k_proj', which the config does not "
                                     "list (target_modules: q_proj)"));
}

TEST_F(PeftIoRejectTest, RankTheFileDoesNotHoldIsRefusedBeforeAllocating) {
  // The file holds layer 2's q_proj at rank 8 (as rank_pattern says); r
  // asks every other layer for rank 2^30: [2^30, 64] floats per A, which
  // PeftModel::Create would allocate before any shape check.
  config_["r"] = 1 << 30;
  config_["rank_pattern"] = {{"model.layers.2.self_attn.q_proj", 8}};
  config_["layers_to_transform"] = nullptr;
  TensorMap one = {{a_, tensors_.at(a_)}, {b_, tensors_.at(b_)}};
  WriteTensors(one);
  WriteText(dir_ + "/adapter_config.json", config_.dump());
  auto r = LoadPeftModel(base(), dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument)
      << r.status().ToString();
  // 4 layers * 2^30 * (64 + 64) + 8 * (64 + 64), against the 1024 held.
  const uint64_t asked = 4ull * (1ull << 30) * 128 + 8 * 128;
  EXPECT_THAT(r.status().message(),
              HasSubstr("adapter_config.json asks for " +
                        std::to_string(asked) + " adapter parameters"));
  EXPECT_THAT(r.status().message(),
              HasSubstr("adapter_model.safetensors holds 1024"));
  EXPECT_THAT(r.status().message(), HasSubstr("maybe wrong base model?"));

  // Bottleneck: bottleneck_dim from the config sizes every adapter too.
  auto m = Make(BottleneckOpts(8));
  ASSERT_NE(m, nullptr);
  TensorMap bottleneck = m->AdapterTensors();
  const std::string bdir = TempDir("bottleneck");
  PeftOptions one_layer = BottleneckOpts(8);
  one_layer.bottleneck.layers_to_transform = {0};
  TensorMap layer0;
  for (const auto& [key, t] : bottleneck) {
    if (key.find(".layers.0.") != std::string::npos) layer0[key] = t;
  }
  ASSERT_TRUE(SaveAdapter(bdir, one_layer, layer0, "x").ok());
  nlohmann::json bconfig = ReadJson(bdir + "/adapter_config.json");
  bconfig["bottleneck_dim"] = 1 << 30;
  WriteText(bdir + "/adapter_config.json", bconfig.dump());
  ASSERT_TRUE(model::WriteSafetensors(
                  bdir + "/adapter_model.safetensors",
                  {{"base_model.model.model.layers.0.attn_adapter.down.weight",
                    torch::zeros({1 << 30, 0})}})
                  .ok());
  auto rb = LoadPeftModel(base(), bdir);
  ASSERT_FALSE(rb.ok());
  EXPECT_EQ(rb.status().code(), StatusCode::kInvalidArgument)
      << rb.status().ToString();
  EXPECT_THAT(rb.status().message(), HasSubstr("adapter parameters"));
  EXPECT_THAT(rb.status().message(),
              HasSubstr("adapter_model.safetensors holds 0"));
}

// --------------------------------------------------------------- Bottleneck

TEST_F(PeftTest, BottleneckIsIdentityTrainableAndRoundTrips) {
  PeftOptions o = BottleneckOpts(8);
  auto m = Make(o);
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(torch::equal(Logits(*m), base_logits_));

  const int64_t dim = base()->config.dim;
  EXPECT_EQ(m->NumTrainableParameters(), 5 * 2 * (8 * dim + 8 + dim * 8 + dim));
  TensorMap t = m->AdapterTensors();
  EXPECT_EQ(t.size(), 5u * 2 * 4);
  EXPECT_EQ(
      t.at("base_model.model.model.layers.4.mlp_adapter.up.weight").sizes(),
      (std::vector<int64_t>{dim, 8}));
  EXPECT_GT(t.at("base_model.model.model.layers.0.attn_adapter.down.weight")
                .abs()
                .max()
                .item<float>(),
            0.0f);

  m->Train(true);
  torch::Tensor tokens = Tokens();
  torch::Tensor logits = m->model().Forward(tokens);
  torch::nn::functional::cross_entropy(
      logits.slice(1, 0, -1).reshape({-1, logits.size(-1)}),
      tokens.slice(1, 1).reshape({-1}))
      .backward();
  for (auto& [key, p] : t) {
    ASSERT_TRUE(p.grad().defined()) << key;
    if (key.find(".up.") != std::string::npos) {
      EXPECT_GT(p.grad().abs().sum().item<double>(), 0) << key;
    }
  }

  Status merge = m->Merge();
  EXPECT_EQ(merge.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(merge.message(), HasSubstr("cannot be merged"));

  Randomize(*m, 9);
  m->Train(false);
  const torch::Tensor trained = Logits(*m);
  EXPECT_FALSE(torch::allclose(trained, base_logits_, 1e-4, 1e-4));
  const std::string dir = TempDir("adapter");
  Status s = SaveAdapter(dir, o, m->AdapterTensors(), "stories260K");
  ASSERT_TRUE(s.ok()) << s.ToString();
  nlohmann::json j = ReadJson(dir + "/adapter_config.json");
  EXPECT_EQ(j["peft_type"], "FEDPEFT_BOTTLENECK");
  EXPECT_EQ(j["bottleneck_dim"], 8);
  EXPECT_EQ(j["activation"], "gelu");
  EXPECT_EQ(j["places"], nlohmann::json::array({"attn", "mlp"}));
  auto loaded = LoadPeftModel(base(), dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ((*loaded)->options().method, "bottleneck");
  EXPECT_TRUE(torch::equal(Logits(**loaded), trained));
}

TEST_F(PeftTest, BottleneckPlacesAndLayers) {
  PeftOptions o = BottleneckOpts(4);
  o.bottleneck.places = {"mlp"};
  o.bottleneck.layers_to_transform = {2};
  auto m = Make(o);
  ASSERT_NE(m, nullptr);
  TensorMap t = m->AdapterTensors();
  ASSERT_EQ(t.size(), 4u);
  EXPECT_TRUE(t.count("base_model.model.model.layers.2.mlp_adapter.down.bias"));
  EXPECT_EQ(m->model().GetSublayerAdapter(2, "attn"), nullptr);
  EXPECT_NE(m->model().GetSublayerAdapter(2, "mlp"), nullptr);
}

// ------------------------------------------------------------------ Options

Status ReadOptions(const std::string& yaml, PeftOptions* out) {
  ConfigReader root(YAML::Load(yaml), "test.yaml");
  ConfigReader section = root.Section("peft");
  out->Read(section);
  return root.Finish();
}

TEST(PeftOptionsTest, ReadsAGoodConfig) {
  PeftOptions o;
  Status s = ReadOptions(R"(
peft:
  method: lora
  lora:
    r: 4
    alpha: 8
    dropout: 0.1
    target_modules: [q_proj, v_proj, down_proj]
    layers_to_transform: [0, 2]
    rank_pattern: {v_proj: 2, "layers.0.self_attn.q_proj": 16}
    alpha_pattern: {down_proj: 4.5}
    use_rslora: true
  bottleneck:
    bottleneck_dim: 32
    places: [mlp]
    activation: silu
)",
                         &o);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(o.method, "lora");
  EXPECT_EQ(o.lora.r, 4);
  EXPECT_DOUBLE_EQ(o.lora.alpha, 8);
  EXPECT_DOUBLE_EQ(o.lora.dropout, 0.1);
  EXPECT_EQ(o.lora.target_modules,
            (std::vector<std::string>{"q_proj", "v_proj", "down_proj"}));
  EXPECT_EQ(o.lora.layers_to_transform, (std::vector<int>{0, 2}));
  EXPECT_EQ(o.lora.rank_pattern,
            (std::map<std::string, int>{{"v_proj", 2},
                                        {"layers.0.self_attn.q_proj", 16}}));
  EXPECT_EQ(o.lora.alpha_pattern,
            (std::map<std::string, double>{{"down_proj", 4.5}}));
  EXPECT_TRUE(o.lora.use_rslora);
  EXPECT_EQ(o.bottleneck.bottleneck_dim, 32);
  EXPECT_EQ(o.bottleneck.places, (std::vector<std::string>{"mlp"}));
  EXPECT_EQ(o.bottleneck.activation, "silu");

  PeftOptions defaults;
  ASSERT_TRUE(ReadOptions("peft: {}", &defaults).ok());
  EXPECT_EQ(defaults.lora.r, 8);
  EXPECT_EQ(defaults.lora.target_modules.size(), 4u);
}

TEST(PeftOptionsTest, RejectsBadValuesNamingTheKey) {
  PeftOptions o;
  Status s = ReadOptions("peft: {lora: {r: 0}}", &o);
  EXPECT_THAT(s.message(), HasSubstr("peft.lora.r: must be >= 1, got 0"));

  s = ReadOptions("peft: {lora: {target_modules: [q_proj, qproj]}}", &o);
  EXPECT_THAT(s.message(), HasSubstr("peft.lora.target_modules"));
  EXPECT_THAT(s.message(), HasSubstr("unknown module 'qproj'"));
  EXPECT_THAT(s.message(),
              HasSubstr("q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                        "down_proj"));

  s = ReadOptions("peft: {lora: {rank_pattern: {v_proj: zero}}}", &o);
  EXPECT_THAT(s.message(), HasSubstr("peft.lora.rank_pattern: expected a "
                                     "mapping of names to integers"));

  s = ReadOptions(
      "peft: {method: ia3, lora: {alpha: 0, rnak: 3}, "
      "bottleneck: {activation: swish}}",
      &o);
  EXPECT_THAT(s.message(), HasSubstr("method: expected one of lora, "
                                     "bottleneck, got 'ia3'"));
  EXPECT_THAT(s.message(), HasSubstr("unknown key 'peft.lora.rnak'"));
  // Only the chosen method's section is range-checked.
  EXPECT_THAT(s.message(), ::testing::Not(HasSubstr("swish")));

  s = ReadOptions(
      "peft: {method: bottleneck, bottleneck: {activation: swish, "
      "places: [ffn]}}",
      &o);
  EXPECT_THAT(s.message(), HasSubstr("peft.bottleneck.activation: expected "
                                     "one of relu, gelu, silu, tanh, got "
                                     "'swish'"));
  EXPECT_THAT(s.message(), HasSubstr("unknown place 'ffn'"));
}

}  // namespace
}  // namespace peft
}  // namespace fedpeft
