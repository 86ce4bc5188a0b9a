// The GGUF LoRA export: what llama.cpp computes from the file,
// (alpha_file / r) * B_file A_file per module with its rows back in our
// order, equals the adapter's true delta scale * B A -- for rsLoRA, rank and
// alpha patterns alike, with the scale written out here from the papers'
// definitions rather than taken from peft/.
#include "peft/gguf_lora.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "model/gguf_reader.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "tests/model/llama_test_util.h"
#include "tests/peft/peft_fixture.h"

namespace fedpeft {
namespace peft {
namespace {

using ::testing::HasSubstr;
using testing_util::PeftTest;

class GgufLoraTest : public PeftTest {
 protected:
  // Adapters with random (non-zero) B on the shipped model, exported to GGUF
  // and checked module by module.
  void ExpectLlamaCppAppliesTheTrueScale(const PeftOptions& options) {
    auto created = PeftModel::Create(base(), options, 3);
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    torch::manual_seed(11);
    TensorMap tensors;
    for (const auto& [key, t] : (*created)->AdapterTensors()) {
      tensors[key] = t.detach().clone();
      if (key.find("lora_B") != std::string::npos) {
        tensors[key] = torch::randn_like(t) * 0.1;
      }
    }
    model::test::TempDir dir;
    const std::string path = dir.File("a.gguf");
    ASSERT_TRUE(
        WriteGgufLora(options, tensors, base()->config, path, "test").ok());
    auto file = model::MappedFile::Open(path);
    ASSERT_TRUE(file.ok());
    auto gguf = model::GgufReader::Parse((*file)->bytes(), path);
    ASSERT_TRUE(gguf.ok()) << gguf.status().ToString();
    auto type = gguf->GetString("general.type");
    ASSERT_TRUE(type.ok());
    EXPECT_EQ(*type, "adapter");
    auto alpha_file = gguf->GetFloat("adapter.lora.alpha");
    ASSERT_TRUE(alpha_file.ok());
    EXPECT_EQ(*alpha_file, options.lora.alpha);

    const model::LlamaConfig& c = base()->config;
    int checked = 0;
    for (const auto& [key, a] : tensors) {
      if (key.find(".lora_A.weight") == std::string::npos) continue;
      const std::string module = key.substr(
          17, key.size() - 17 - std::string(".lora_A.weight").size());
      const torch::Tensor b =
          tensors.at("base_model.model." + module + ".lora_B.weight");
      const int64_t r = a.size(0);
      // PEFT: alpha / r, or alpha / sqrt(r) with rsLoRA; patterns by suffix.
      double alpha = options.lora.alpha;
      for (const auto& [k, v] : options.lora.alpha_pattern) {
        if (module == k || (module.size() > k.size() &&
                            module.compare(module.size() - k.size() - 1,
                                           k.size() + 1, "." + k) == 0)) {
          alpha = v;
        }
      }
      const double scale =
          options.lora.use_rslora ? alpha / std::sqrt(double(r)) : alpha / r;
      const torch::Tensor want =
          torch::matmul(b.to(torch::kFloat64), a.to(torch::kFloat64)) * scale;

      const std::string name =
          "blk." + module.substr(13, module.find('.', 13) - 13) + "." +
          (module.find("q_proj") != std::string::npos      ? "attn_q"
           : module.find("k_proj") != std::string::npos    ? "attn_k"
           : module.find("v_proj") != std::string::npos    ? "attn_v"
           : module.find("o_proj") != std::string::npos    ? "attn_output"
           : module.find("gate_proj") != std::string::npos ? "ffn_gate"
           : module.find("up_proj") != std::string::npos   ? "ffn_up"
                                                           : "ffn_down") +
          ".weight";
      const auto* fa = gguf->FindTensor(name + ".lora_a");
      const auto* fb = gguf->FindTensor(name + ".lora_b");
      ASSERT_NE(fa, nullptr) << name;
      ASSERT_NE(fb, nullptr) << name;
      auto ta = gguf->ReadTensor(*fa);
      auto tb = gguf->ReadTensor(*fb);
      ASSERT_TRUE(ta.ok() && tb.ok());
      EXPECT_EQ(fb->ne[0], r) << name;  // the rank llama.cpp divides by
      torch::Tensor got =
          torch::matmul(tb->to(torch::kFloat64), ta->to(torch::kFloat64)) *
          (*alpha_file / static_cast<double>(fb->ne[0]));
      if (module.find("q_proj") != std::string::npos) {
        got = model::PermuteInterleavedToHalves(got, c.n_heads);
      } else if (module.find("k_proj") != std::string::npos) {
        got = model::PermuteInterleavedToHalves(got, c.n_kv_heads);
      }
      const double err = (got - want).abs().max().item<double>();
      EXPECT_LE(err, 1e-6 * (1 + want.abs().max().item<double>())) << name;
      ++checked;
    }
    EXPECT_EQ(checked, 35);  // 5 layers x 7 projections
  }
};

PeftOptions AllProjections() {
  PeftOptions o;
  o.lora.r = 8;
  o.lora.alpha = 16;
  o.lora.target_modules = model::ProjectionNames();
  return o;
}

TEST_F(GgufLoraTest, PlainLoraIsWrittenUnscaled) {
  ExpectLlamaCppAppliesTheTrueScale(AllProjections());
}

TEST_F(GgufLoraTest, RsLoraScaleIsFoldedIntoB) {
  PeftOptions o = AllProjections();
  o.lora.use_rslora = true;
  ExpectLlamaCppAppliesTheTrueScale(o);
}

TEST_F(GgufLoraTest, RankAndAlphaPatternsAreFoldedPerModule) {
  PeftOptions o = AllProjections();
  o.lora.rank_pattern = {{"q_proj", 2}, {"layers.3.self_attn.v_proj", 16}};
  o.lora.alpha_pattern = {{"o_proj", 4}, {"layers.1.mlp.up_proj", 40}};
  ExpectLlamaCppAppliesTheTrueScale(o);
  o.lora.use_rslora = true;
  ExpectLlamaCppAppliesTheTrueScale(o);
}

TEST_F(GgufLoraTest, BottleneckAdaptersHaveNoGgufLayout) {
  PeftOptions o;
  o.method = "bottleneck";
  Status s = WriteGgufLora(o, {}, base()->config, "/nonexistent/x.gguf");
  EXPECT_EQ(s.code(), StatusCode::kUnimplemented);
  EXPECT_THAT(s.message(), HasSubstr("--merge"));
}

}  // namespace
}  // namespace peft
}  // namespace fedpeft
