// Tests of peft/: LoRA and bottleneck adapters on the shipped stories260K
// model (peft_fixture.h), and the peft options.
#include "tests/peft/peft_fixture.h"

namespace fedpeft {
namespace peft {
namespace {

using ::testing::HasSubstr;
using testing_util::BottleneckOpts;
using testing_util::kModelDir;
using testing_util::LoraOpts;
using testing_util::PeftTest;

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
