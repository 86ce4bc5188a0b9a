// Tests of peft/peft_io: Hugging Face PEFT import/export of adapters on
// the shipped stories260K model (peft_fixture.h), and what it refuses.
#include "tests/peft/peft_fixture.h"

namespace fedpeft {
namespace peft {
namespace {

using ::testing::HasSubstr;
using testing_util::BottleneckOpts;
using testing_util::kModelDir;
using testing_util::LoraOpts;
using testing_util::PeftTest;

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

}  // namespace
}  // namespace peft
}  // namespace fedpeft
