// Gradient checkpointing (model/checkpoint.h, LlamaModel::
// set_gradient_checkpointing): the same loss and adapter gradients as
// without, for every adapter kind of peft/, with LoRA dropout, layer
// freezing, heterogeneous ranks, and on a Qwen3-shaped model; the recompute
// really runs in backward and replays the dropout masks.
#include "model/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "model/random_model.h"
#include "peft/peft_model.h"
#include "tests/model/llama_test_util.h"

namespace fedpeft {
namespace model {
namespace {

using test::kHfDir;
using test::LoadOrDie;

// Relative tolerance of gradients: the recompute runs the same kernels on
// the same values, so anything but round-off is a bug.
constexpr double kRtol = 1e-5;
constexpr double kAtol = 1e-8;

torch::Tensor RandomTokens(int64_t vocab) {
  // Two rows of 24 pseudo-random ids, fixed.
  return (torch::arange(48, torch::kInt64) * 7919 + 13)
      .remainder(vocab)
      .view({2, 24});
}

// Every adapter tensor set to normal(0, 0.05) noise: a fresh LoRA B of zero
// would leave A without gradient and hide a missing one.
void Randomize(peft::PeftModel& m, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  torch::NoGradGuard no_grad;
  for (auto& [key, t] : m.AdapterTensors()) {
    t.copy_(torch::randn(t.sizes(), gen) * 0.05);
  }
}

struct StepResult {
  double loss = 0.0;
  TensorMap grads;  // PEFT key -> gradient (undefined when none)
};

// One training forward + backward of next-token cross entropy, dropout
// drawn from the global generator seeded with `seed`.
StepResult Step(peft::PeftModel& m, const torch::Tensor& tokens,
                bool checkpointing, uint64_t seed) {
  LlamaModel& model = m.model();
  model.set_gradient_checkpointing(checkpointing);
  m.Train(true);
  for (auto& [key, t] : m.AdapterTensors()) t.mutable_grad() = torch::Tensor();
  torch::manual_seed(seed);
  torch::Tensor logits = model.Forward(tokens);
  const int64_t vocab = logits.size(-1);
  torch::Tensor loss = torch::nn::functional::cross_entropy(
      logits.slice(1, 0, -1).reshape({-1, vocab}),
      tokens.slice(1, 1).reshape({-1}));
  loss.backward();
  StepResult out;
  out.loss = loss.item<double>();
  for (auto& [key, t] : m.AdapterTensors()) {
    out.grads[key] = t.grad().defined() ? t.grad().clone() : torch::Tensor();
  }
  model.set_gradient_checkpointing(false);
  return out;
}

// Checkpointed and plain runs agree; every tensor of a layer at or above
// `first_trainable` has a non-zero gradient and every one below none.
void ExpectSameLossAndGrads(peft::PeftModel& m, const torch::Tensor& tokens,
                            int64_t first_trainable = 0) {
  m.model().set_first_trainable_layer(first_trainable);
  const StepResult plain = Step(m, tokens, false, 7);
  const StepResult ckpt = Step(m, tokens, true, 7);
  m.model().set_first_trainable_layer(0);
  EXPECT_NEAR(ckpt.loss, plain.loss, kRtol * std::abs(plain.loss));
  ASSERT_EQ(ckpt.grads.size(), plain.grads.size());
  for (const auto& [key, g] : plain.grads) {
    const torch::Tensor& c = ckpt.grads.at(key);
    const std::string layer = key.substr(key.find("layers.") + 7);
    const bool trains = std::stoll(layer) >= first_trainable;
    ASSERT_EQ(g.defined(), trains) << key;
    ASSERT_EQ(c.defined(), trains) << key;
    if (!trains) continue;
    EXPECT_GT(g.abs().max().item<double>(), 0.0) << key;
    EXPECT_TRUE(torch::allclose(c, g, kRtol, kAtol))
        << key << ": max difference " << (c - g).abs().max().item<double>();
  }
}

std::unique_ptr<peft::PeftModel> Make(std::shared_ptr<const LlamaWeights> w,
                                      const peft::PeftOptions& o) {
  auto m = peft::PeftModel::Create(std::move(w), o, 3);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  if (!m.ok()) return nullptr;
  Randomize(**m, 5);
  return std::move(m).value();
}

peft::PeftOptions AllProjectionsLora(double dropout) {
  peft::PeftOptions o;
  o.lora.r = 4;
  o.lora.alpha = 8;
  o.lora.dropout = dropout;
  o.lora.target_modules = ProjectionNames();
  return o;
}

TEST(CheckpointTest, RecomputesInBackwardAndReplaysTheGenerator) {
  torch::Tensor w = torch::randn({6, 6}).requires_grad_(true);
  int calls = 0;
  const Block block = [&](const torch::Tensor& x) {
    ++calls;
    return torch::dropout(torch::tanh(torch::matmul(x, w)), 0.5, true);
  };
  const torch::Tensor x0 = torch::randn({4, 6});
  auto run = [&](bool checkpoint, torch::Tensor* gx, torch::Tensor* gw) {
    torch::Tensor x = x0.clone().requires_grad_(true);
    w.mutable_grad() = torch::Tensor();
    torch::manual_seed(11);
    torch::Tensor y = checkpoint ? Checkpoint(block, x, {w}) : block(x);
    (y * y).sum().backward();
    *gx = x.grad();
    *gw = w.grad();
    return torch::rand({1}).item<double>();  // the generator afterwards
  };
  torch::Tensor gx_plain, gw_plain, gx, gw;
  const double next_plain = run(false, &gx_plain, &gw_plain);
  calls = 0;
  const double next = run(true, &gx, &gw);
  EXPECT_EQ(calls, 2);  // the forward, then the recompute in backward
  EXPECT_TRUE(torch::allclose(gx, gx_plain, kRtol, kAtol));
  EXPECT_TRUE(torch::allclose(gw, gw_plain, kRtol, kAtol));
  EXPECT_EQ(next, next_plain);  // the generator is left where it would be

  // No grad mode, or nothing to differentiate: just the block, no node.
  calls = 0;
  {
    torch::NoGradGuard no_grad;
    EXPECT_FALSE(Checkpoint(block, x0, {w}).requires_grad());
  }
  w.requires_grad_(false);
  EXPECT_FALSE(Checkpoint(block, x0, {w}).requires_grad());
  EXPECT_EQ(calls, 2);
}

// Stories260K, LoRA of heterogeneous ranks on all seven projections, with
// dropout: the recompute must draw the forward's masks.
TEST(CheckpointTest, LoraWithDropoutAndMixedRanksMatches) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_NE(w, nullptr);
  peft::PeftOptions o = AllProjectionsLora(0.2);
  o.lora.rank_pattern = {{"v_proj", 2}, {"layers.3.mlp.down_proj", 6}};
  auto m = Make(w, o);
  ASSERT_NE(m, nullptr);
  ExpectSameLossAndGrads(*m, RandomTokens(w->config.vocab_size));

  // Dropout without the replayed generator would give other gradients:
  // two runs with different seeds differ, so the agreement above is no
  // accident of p.
  const StepResult a = Step(*m, RandomTokens(w->config.vocab_size), false, 7);
  const StepResult b = Step(*m, RandomTokens(w->config.vocab_size), false, 8);
  EXPECT_NE(a.loss, b.loss);
}

TEST(CheckpointTest, RsLoraWithFrozenLowerLayersMatches) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_NE(w, nullptr);
  peft::PeftOptions o = AllProjectionsLora(0.1);
  o.lora.use_rslora = true;
  auto m = Make(w, o);
  ASSERT_NE(m, nullptr);
  // Layers 0-2 run without grad; layer 3's input then needs no gradient
  // and only its adapters pull the backward through it.
  ExpectSameLossAndGrads(*m, RandomTokens(w->config.vocab_size),
                         /*first_trainable=*/3);
}

TEST(CheckpointTest, BottleneckAdaptersMatch) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_NE(w, nullptr);
  peft::PeftOptions o;
  o.method = "bottleneck";
  o.bottleneck.bottleneck_dim = 8;
  o.bottleneck.activation = "gelu";
  auto m = Make(w, o);
  ASSERT_NE(m, nullptr);
  ExpectSameLossAndGrads(*m, RandomTokens(w->config.vocab_size));
}

// Qwen3's shape: head_dim above dim / heads, q_norm and k_norm, GQA.
TEST(CheckpointTest, Qwen3ShapedLoraMatches) {
  auto text = ReadFileToString(std::string(FEDPEFT_SOURCE_DIR) +
                               "/assets/configs/qwen3-0.6b/config.json");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  auto full = LlamaConfig::FromHfJson(nlohmann::json::parse(*text), "qwen3");
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  ModelShape shape;
  shape.layers = 3;
  shape.hidden = 64;
  shape.heads = 4;
  shape.kv_heads = 2;
  shape.head_dim = 32;
  shape.intermediate = 96;
  shape.vocab = 128;
  shape.max_positions = 256;
  auto small = ReshapeConfig(*full, shape);
  ASSERT_TRUE(small.ok()) << small.status().ToString();
  ASSERT_TRUE(small->qk_norm);
  auto w = RandomLlamaWeights(*small, 9);
  auto m = Make(w, AllProjectionsLora(0.1));
  ASSERT_NE(m, nullptr);
  ExpectSameLossAndGrads(*m, RandomTokens(small->vocab_size));
}

// Generation (a KV cache) and inference (no grad) are untouched by the
// switch: the cache would get every key twice if a layer were recomputed.
TEST(CheckpointTest, CacheAndNoGradRunPlain) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_NE(w, nullptr);
  auto m = Make(w, AllProjectionsLora(0.0));
  ASSERT_NE(m, nullptr);
  LlamaModel& model = m->model();
  const torch::Tensor tokens = RandomTokens(w->config.vocab_size);
  torch::Tensor want;
  {
    torch::NoGradGuard no_grad;
    want = model.Forward(tokens);
  }
  model.set_gradient_checkpointing(true);
  KvCache cache;
  torch::Tensor got = model.Forward(tokens, &cache);
  EXPECT_EQ(cache.length, tokens.size(1));
  EXPECT_EQ(cache.k[0].size(2), tokens.size(1));
  EXPECT_LT(test::MaxAbsDiff(got, want), test::kLogitTol);
  {
    torch::NoGradGuard no_grad;
    EXPECT_LT(test::MaxAbsDiff(model.Forward(tokens), want), test::kLogitTol);
  }
  model.set_gradient_checkpointing(false);
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
