// LoRA on today's architectures: Qwen3 (q_proj wider than hidden_size,
// q_norm/k_norm) on the tiny random checkpoint of
// tests/reference/arch/qwen3. PEFT names the same seven projections for
// llama, mistral, qwen2 and qwen3; norms are never targets.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "common/file_util.h"
#include "model/loader.h"
#include "peft/peft_io.h"
#include "peft/peft_model.h"

namespace fedpeft {
namespace peft {
namespace {

using ::testing::HasSubstr;

const std::string kQwen3Dir =
    std::string(FEDPEFT_SOURCE_DIR) + "/tests/reference/arch/qwen3";

PeftOptions AllProjections(int r) {
  PeftOptions o;
  o.lora.r = r;
  o.lora.target_modules = model::ProjectionNames();
  return o;
}

TEST(PeftArchTest, Qwen3LoraShapesFollowHeadDimAndNormsStayFrozen) {
  auto base = model::LoadHfModel(kQwen3Dir);
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  const model::LlamaConfig& c = (*base)->config;
  ASSERT_TRUE(c.qk_norm);
  ASSERT_NE(c.q_dim(), c.dim);
  auto m = PeftModel::Create(*base, AllProjections(4), 1);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const TensorMap adapter = (*m)->AdapterTensors();
  const std::string p = "base_model.model.model.layers.1.self_attn.";
  EXPECT_EQ(adapter.at(p + "q_proj.lora_A.weight").sizes(),
            (std::vector<int64_t>{4, c.dim}));
  EXPECT_EQ(adapter.at(p + "q_proj.lora_B.weight").sizes(),
            (std::vector<int64_t>{c.q_dim(), 4}));
  EXPECT_EQ(adapter.at(p + "o_proj.lora_A.weight").sizes(),
            (std::vector<int64_t>{4, c.q_dim()}));
  for (const auto& [key, t] : adapter) {
    EXPECT_EQ(key.find("norm"), std::string::npos) << key;
  }

  // One training step: gradients reach the adapters only; q_norm/k_norm
  // are base weights without gradients.
  (*m)->Train(true);
  torch::Tensor tokens = torch::arange(24, torch::kInt64).view({1, -1});
  torch::Tensor logits = (*m)->model().Forward(tokens);
  torch::nn::functional::cross_entropy(
      logits.slice(1, 0, -1).reshape({-1, logits.size(-1)}),
      tokens.slice(1, 1).reshape({-1}))
      .backward();
  for (const auto& [name, w] : (*base)->tensors) {
    EXPECT_FALSE(w.requires_grad()) << name;
  }
  EXPECT_TRUE((*base)->tensors.count("model.layers.0.self_attn.q_norm.weight"));
  EXPECT_EQ((*m)->TrainableParameters().size(), adapter.size());
}

TEST(PeftArchTest, NormsAreRefusedAsTargets) {
  for (const char* target : {"q_norm", "k_norm", "input_layernorm"}) {
    PeftOptions o = AllProjections(4);
    o.lora.target_modules.push_back(target);
    Status s = ValidatePeftOptions(o);
    ASSERT_FALSE(s.ok()) << target;
    EXPECT_THAT(s.message(),
                HasSubstr("unknown module '" + std::string(target) + "'"));
    EXPECT_THAT(s.message(), HasSubstr("never LoRA targets"));
  }
}

TEST(PeftArchTest, ExportedAdapterNamesPeftModules) {
  auto base = model::LoadHfModel(kQwen3Dir);
  ASSERT_TRUE(base.ok()) << base.status().ToString();
  auto m = PeftModel::Create(*base, AllProjections(2), 3);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  const std::string dir = (std::filesystem::temp_directory_path() /
                           ("fedpeft_peft_arch_" + std::to_string(::getpid())))
                              .string();
  ASSERT_TRUE(
      SaveAdapter(dir, (*m)->options(), (*m)->AdapterTensors(), kQwen3Dir)
          .ok());
  auto text = ReadFileToString(dir + "/adapter_config.json");
  ASSERT_TRUE(text.ok());
  const nlohmann::json j = nlohmann::json::parse(*text);
  EXPECT_EQ(j.at("target_modules"),
            nlohmann::json({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                            "up_proj", "down_proj"}));
  EXPECT_EQ(j.at("base_model_name_or_path"), kQwen3Dir);
  auto loaded = LoadPeftModel(*base, dir);
  EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace peft
}  // namespace fedpeft
