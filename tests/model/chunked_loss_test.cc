// The fused, chunked output layer + cross entropy (model/chunked_loss.h)
// against cross_entropy of the full logits: loss and gradients, chunk sizes
// that do not divide the tokens, ignored targets, no target at all, tied
// (stories260K) and untied output layers, and the errors.
#include "model/chunked_loss.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "model/random_model.h"
#include "peft/peft_model.h"
#include "tests/model/llama_test_util.h"

namespace fedpeft {
namespace model {
namespace {

using ::testing::HasSubstr;

constexpr double kLossRtol = 1e-5;
constexpr double kLossAtol = 1e-7;

torch::Tensor Reference(const torch::Tensor& hidden, const torch::Tensor& w,
                        const torch::Tensor& targets) {
  torch::Tensor logits = torch::matmul(hidden, w.t()).to(torch::kFloat32);
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, w.size(0)}), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
}

// Targets of [3, 7] with a few ignored, from a fixed generator.
torch::Tensor Targets(int64_t vocab, at::Generator& gen) {
  torch::Tensor t = torch::randint(vocab, {3, 7}, gen, torch::kInt64);
  t.index_put_({0, 0}, -100);
  t.index_put_({1, torch::indexing::Slice(2, 5)}, -100);
  t.index_put_({2, 6}, -100);
  return t;
}

TEST(ChunkedLossTest, MatchesCrossEntropyForEveryChunkSize) {
  at::Generator gen = at::detail::createCPUGenerator(3);
  const torch::Tensor w = torch::randn({50, 16}, gen);
  const torch::Tensor h0 = torch::randn({3, 7, 16}, gen);
  const torch::Tensor targets = Targets(50, gen);

  torch::Tensor h_ref = h0.clone().requires_grad_(true);
  torch::Tensor want = Reference(h_ref, w, targets);
  want.backward();
  // 21 rows, 16 with a target: 1, 4 and 5 divide neither; 0 = automatic
  // (one chunk here); 100 > rows.
  for (int64_t chunk : {1, 4, 5, 0, 100}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    torch::Tensor h = h0.clone().requires_grad_(true);
    torch::Tensor got = LinearCrossEntropy(h, w, targets, chunk);
    EXPECT_EQ(got.dim(), 0);
    EXPECT_EQ(got.scalar_type(), torch::kFloat32);
    EXPECT_NEAR(got.item<double>(), want.item<double>(),
                kLossRtol * want.item<double>());
    (got * 3.0).backward();  // the incoming gradient scales dh
    EXPECT_TRUE(
        torch::allclose(h.grad(), h_ref.grad() * 3.0, kLossRtol, kLossAtol))
        << (h.grad() - h_ref.grad() * 3.0).abs().max().item<double>();
    // Ignored rows get exactly zero.
    EXPECT_EQ(h.grad()[1][3].abs().max().item<double>(), 0.0);
  }
  // Without grad: the same value, nothing to differentiate.
  torch::NoGradGuard no_grad;
  torch::Tensor h = h0.clone().requires_grad_(true);
  torch::Tensor got = LinearCrossEntropy(h, w, targets, 4);
  EXPECT_FALSE(got.requires_grad());
  EXPECT_NEAR(got.item<double>(), want.item<double>(),
              kLossRtol * want.item<double>());
}

// torch gives NaN (0 / 0) for the mean over no target and a zero gradient;
// so does the chunked loss. Trainer and Evaluate skip such batches.
TEST(ChunkedLossTest, AllTargetsIgnoredIsNanWithZeroGradientAsInTorch) {
  at::Generator gen = at::detail::createCPUGenerator(4);
  const torch::Tensor w = torch::randn({50, 16}, gen);
  const torch::Tensor targets = torch::full({2, 5}, -100, torch::kInt64);
  torch::Tensor h_ref = torch::randn({2, 5, 16}, gen).requires_grad_(true);
  torch::Tensor want = Reference(h_ref, w, targets);
  want.backward();
  ASSERT_TRUE(std::isnan(want.item<double>()));  // torch's behaviour
  torch::Tensor h = h_ref.detach().clone().requires_grad_(true);
  torch::Tensor got = LinearCrossEntropy(h, w, targets, 3);
  EXPECT_TRUE(std::isnan(got.item<double>()));
  got.backward();
  EXPECT_TRUE(torch::equal(h.grad(), h_ref.grad()));
  EXPECT_EQ(h.grad().abs().max().item<double>(), 0.0);
}

// Half-precision bases: logits in float32 as LlamaModel::Logits makes them,
// the gradient back in the weight's dtype as autograd gives it.
TEST(ChunkedLossTest, Bfloat16HiddenAndWeight) {
  at::Generator gen = at::detail::createCPUGenerator(5);
  const torch::Tensor w = torch::randn({50, 16}, gen).to(torch::kBFloat16);
  const torch::Tensor h0 = torch::randn({3, 7, 16}, gen).to(torch::kBFloat16);
  const torch::Tensor targets = Targets(50, gen);
  torch::Tensor h_ref = h0.clone().requires_grad_(true);
  torch::Tensor want = Reference(h_ref, w, targets);
  want.backward();
  torch::Tensor h = h0.clone().requires_grad_(true);
  torch::Tensor got = LinearCrossEntropy(h, w, targets, 4);
  got.backward();
  EXPECT_NEAR(got.item<double>(), want.item<double>(), 1e-4);
  EXPECT_EQ(h.grad().scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::allclose(h.grad().to(torch::kFloat32),
                              h_ref.grad().to(torch::kFloat32), 2e-2, 1e-3));
}

// A 16-bit output layer under float32 hidden states (a frozen base,
// model.base_dtype) is walked in blocks of vocabulary rows with an online
// log-sum-exp; it equals cross entropy over the float32 logits of the
// converted matrix, for block sizes that divide the vocabulary and not.
TEST(ChunkedLossTest, Bfloat16WeightUnderFloat32HiddenInVocabularyBlocks) {
  at::Generator gen = at::detail::createCPUGenerator(11);
  const torch::Tensor w = torch::randn({50, 16}, gen).to(torch::kBFloat16);
  const torch::Tensor h0 = torch::randn({3, 7, 16}, gen);
  const torch::Tensor targets = Targets(50, gen);
  torch::Tensor h_ref = h0.clone().requires_grad_(true);
  torch::Tensor want = Reference(h_ref, w.to(torch::kFloat32), targets);
  want.backward();
  for (int64_t block : {1, 7, 10, 0, 64}) {
    SCOPED_TRACE("vocabulary block " + std::to_string(block));
    torch::Tensor h = h0.clone().requires_grad_(true);
    torch::Tensor got = LinearCrossEntropy(h, w, targets, block);
    EXPECT_NEAR(got.item<double>(), want.item<double>(),
                kLossRtol * want.item<double>());
    got.backward();
    EXPECT_TRUE(torch::allclose(h.grad(), h_ref.grad(), kLossRtol, kLossAtol))
        << (h.grad() - h_ref.grad()).abs().max().item<double>();
    EXPECT_EQ(h.grad()[1][3].abs().max().item<double>(), 0.0);
  }
}

TEST(ChunkedLossTest, BadArgumentsAreNamed) {
  const torch::Tensor w = torch::randn({10, 4});
  const torch::Tensor h = torch::randn({2, 3, 4});
  auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const c10::Error& e) {
      return std::string(e.what_without_backtrace());
    }
    return std::string("no error");
  };
  EXPECT_THAT(message([&] {
                LinearCrossEntropy(h, w, torch::full({2, 3}, 10, torch::kLong));
              }),
              HasSubstr("target 10 out of range [0, 10)"));
  EXPECT_THAT(message([&] {
                LinearCrossEntropy(h, w, torch::full({2, 3}, -1, torch::kLong));
              }),
              HasSubstr("target -1 out of range"));
  EXPECT_THAT(message([&] {
                LinearCrossEntropy(h, w, torch::zeros({3, 2}, torch::kLong));
              }),
              HasSubstr("do not match hidden"));
  EXPECT_THAT(message([&] {
                LinearCrossEntropy(h, torch::randn({10, 5}),
                                   torch::zeros({2, 3}, torch::kLong));
              }),
              HasSubstr("do not chain"));
  EXPECT_THAT(message([&] {
                LinearCrossEntropy(h, w.clone().requires_grad_(true),
                                   torch::zeros({2, 3}, torch::kLong));
              }),
              HasSubstr("must be frozen"));
}

// Loss and LoRA gradients through a real model: Hidden + the chunked loss
// against cross_entropy(Forward).
void ExpectModelLossMatches(std::shared_ptr<const LlamaWeights> w) {
  peft::PeftOptions o;
  o.lora.r = 4;
  o.lora.target_modules = ProjectionNames();
  auto created = peft::PeftModel::Create(w, o, 3);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  peft::PeftModel& m = **created;
  {
    at::Generator gen = at::detail::createCPUGenerator(6);
    torch::NoGradGuard no_grad;
    for (auto& [key, t] : m.AdapterTensors()) {
      t.copy_(torch::randn(t.sizes(), gen) * 0.05);
    }
  }
  const int64_t vocab = w->config.vocab_size;
  const torch::Tensor tokens = (torch::arange(38, torch::kInt64) * 7919 + 5)
                                   .remainder(vocab)
                                   .view({2, 19});
  torch::Tensor targets = tokens.roll(-1, 1).clone();
  targets.index_put_({torch::indexing::Slice(), -1}, -100);
  targets.index_put_({0, torch::indexing::Slice(0, 4)}, -100);  // a prompt

  auto run = [&](bool chunked) {
    for (auto& [key, t] : m.AdapterTensors()) {
      t.mutable_grad() = torch::Tensor();
    }
    LlamaModel& model = m.model();
    torch::Tensor loss =
        chunked ? LinearCrossEntropy(model.Hidden(tokens), model.lm_head(),
                                     targets, /*chunk_rows=*/5)
                : Reference(model.Hidden(tokens), model.lm_head(), targets);
    loss.backward();
    TensorMap grads;
    for (auto& [key, t] : m.AdapterTensors()) grads[key] = t.grad().clone();
    return std::make_pair(loss.item<double>(), grads);
  };
  const auto [want, want_grads] = run(false);
  const auto [got, got_grads] = run(true);
  EXPECT_NEAR(got, want, kLossRtol * want);
  // Relative to each tensor's largest gradient: the matmuls over the
  // vocabulary sum in other blocks (chunks of 5 rows against all at once),
  // which moves entries near zero by ~1e-7 absolute.
  for (const auto& [key, g] : want_grads) {
    const double scale = g.abs().max().item<double>();
    EXPECT_GT(scale, 0.0) << key;
    EXPECT_LE((got_grads.at(key) - g).abs().max().item<double>(),
              kLossRtol * scale)
        << key;
  }
}

TEST(ChunkedLossTest, TiedStories260KLossAndLoraGradientsMatch) {
  auto w = test::LoadOrDie(test::kHfDir);
  ASSERT_NE(w, nullptr);
  ASSERT_TRUE(w->config.tie_embeddings);
  ExpectModelLossMatches(w);
}

TEST(ChunkedLossTest, UntiedModelLossAndLoraGradientsMatch) {
  LlamaConfig c;
  c.dim = 32;
  c.hidden_dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 97;
  c.max_seq_len = 64;
  c.tie_embeddings = false;
  auto w = RandomLlamaWeights(c, 12);
  ASSERT_TRUE(w->tensors.count("lm_head.weight"));
  ExpectModelLossMatches(w);
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
