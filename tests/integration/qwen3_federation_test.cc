// A federation on today's model family, end to end with real processes: a
// tiny random-weight checkpoint built by `fedpeft init-model` from the real
// Qwen3-0.6B config.json (full 151,936-token vocabulary), the real Qwen3
// tokenizer.json, and the shipped alpaca data laid out in Qwen3's chat
// template (detected from its tokenizer_config.json). The exported adapter
// is what Hugging Face PEFT loads for Qwen3: PEFT's module names and keys.
#include "tests/integration/federation_fixture.h"

namespace fedpeft {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_util::FederationTest;
using testing_util::Slurp;

// The tensor names in a safetensors file (its JSON header).
std::vector<std::string> SafetensorsNames(const std::string& path) {
  const std::string bytes = Slurp(path);
  if (bytes.size() < 8) return {};
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  std::vector<std::string> names;
  for (const auto& [k, v] : header.items()) {
    if (k != "__metadata__") names.push_back(k);
  }
  return names;
}

TEST_F(FederationTest, Qwen3WithItsTokenizerAndChatTemplate) {
  const std::string model = Path("qwen3-tiny");
  pid_t init =
      Spawn({"init-model", "--config", "assets/configs/qwen3-0.6b", "--out",
             model, "--layers", "2", "--hidden", "64", "--heads", "4",
             "--kv-heads", "2", "--head-dim", "16", "--intermediate", "128"},
            Path("init.txt"));
  ASSERT_EQ(Wait(init, std::chrono::seconds(120)), 0)
      << Slurp(Path("init.txt"));

  const std::string out = Path("sim");
  const std::string log = Path("simulate.txt");
  pid_t sim = Spawn(
      {"simulate", "--config", "configs/qwen3_chat.yaml", "--out", out, "--set",
       "coordinator.model.path=" + model, "--set", "worker.model.path=" + model,
       "--set", "coordinator.federation.rounds=2", "--set",
       "coordinator.train.local_steps=3", "--set",
       "coordinator.eval.data.max_records=200", "--set",
       "worker.data.max_records=200", "--set", "simulation.sample_tokens=4"},
      log);
  ASSERT_EQ(Wait(sim, std::chrono::seconds(600)), 0) << Slurp(log) << Logs();
  const std::string text = Slurp(log);
  EXPECT_THAT(text, HasSubstr("2 rounds aggregated"));
  // Every worker and the server eval found Qwen3's template.
  EXPECT_THAT(text, HasSubstr("chat template: qwen3 (detected in "));
  EXPECT_THAT(text, ::testing::Not(HasSubstr("chat template: alpaca")));

  // The adapter as PEFT names it for Qwen3: its seven projections, keys
  // base_model.model.model.layers.N.<module>.lora_{A,B}.weight, no norms.
  nlohmann::json config =
      nlohmann::json::parse(Slurp(out + "/adapter/adapter_config.json"));
  EXPECT_EQ(config.at("peft_type"), "LORA");
  EXPECT_EQ(config.at("task_type"), "CAUSAL_LM");
  EXPECT_EQ(config.at("target_modules"),
            nlohmann::json({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                            "up_proj", "down_proj"}));
  std::vector<std::string> names =
      SafetensorsNames(out + "/adapter/adapter_model.safetensors");
  EXPECT_EQ(names.size(), 2u * 7u * 2u);  // layers x modules x {A, B}
  for (const char* key :
       {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight",
        "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"}) {
    EXPECT_THAT(names, ::testing::Contains(std::string(key)));
  }
  for (const std::string& n : names) {
    EXPECT_EQ(n.find("norm"), std::string::npos) << n;
  }
}

}  // namespace
}  // namespace fedpeft
