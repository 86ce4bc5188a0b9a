// A model held in parts (LayerSpan; pipeline stages): parts chained give
// the whole model's logits, a Hugging Face folder is read only for the part
// held, and spans out of range are refused.
#include <gmock/gmock.h>

#include "tests/model/llama_test_util.h"

namespace fedpeft {
namespace model {
namespace {

using test::kHfDir;
using test::kLogitTol;
using test::LoadOrDie;
using test::MaxAbsDiff;
using test::Tokens;

std::shared_ptr<const LlamaWeights> Part(const LlamaWeights& whole,
                                         LayerSpan span) {
  auto part = std::make_shared<LlamaWeights>(whole);
  RestrictToSpan(part.get(), span);
  EXPECT_TRUE(part->Validate().ok()) << part->Validate().ToString();
  return part;
}

// Prefill, then three decode steps, through three parts of stories260K
// (layers 0-1 with the embeddings and output layer, 2, 3-4), each with its
// own KV cache as a pipeline's stages keep them: the logits equal one
// whole model's with one cache.
TEST(LlamaSpanTest, PartsInSequenceComputeTheWholeModel) {
  auto whole = LoadOrDie(kHfDir);
  ASSERT_NE(whole, nullptr);
  LlamaModel full(whole);
  LlamaModel head(Part(*whole, {0, 2, true}));
  LlamaModel middle(Part(*whole, {2, 3, false}));
  LlamaModel tail(Part(*whole, {3, 5, false}));
  torch::NoGradGuard no_grad;
  KvCache full_cache, head_cache, middle_cache, tail_cache;
  std::vector<int64_t> ids = test::kPrompt;
  for (int step = 0; step < 4; ++step) {
    const torch::Tensor tokens = Tokens(ids);
    const torch::Tensor want = full.Forward(tokens, &full_cache);
    torch::Tensor h = head.RunLayers(head.Embed(tokens), &head_cache);
    h = tail.RunLayers(middle.RunLayers(h, &middle_cache), &tail_cache);
    const torch::Tensor got = head.Head(h);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LT(MaxAbsDiff(got, want), kLogitTol) << "step " << step;
    EXPECT_EQ(tail_cache.length, full_cache.length);
    ids = {got[0][-1].argmax().item<int64_t>()};
  }
  // A part holds only its own layers, and refuses what it lacks.
  EXPECT_THROW(middle.Embed(Tokens({1})), c10::Error);
  EXPECT_THROW(middle.Hidden(Tokens({1})), c10::Error);
  EXPECT_THROW(middle.GetLinearDelta(0, "q_proj"), c10::Error);
}

TEST(LlamaSpanTest, AFolderIsReadOnlyForThePartHeld) {
  auto whole = LoadOrDie(kHfDir);
  LoadOptions options;
  options.span = {1, 3, false};
  auto part = LoadOrDie(kHfDir, options);
  ASSERT_NE(part, nullptr);
  EXPECT_EQ(part->span.begin, 1);
  EXPECT_EQ(part->span.end, 3);
  for (const auto& [name, t] : part->tensors) {
    EXPECT_TRUE(name.rfind("model.layers.1.", 0) == 0 ||
                name.rfind("model.layers.2.", 0) == 0)
        << name;
  }
  EXPECT_EQ(part->tensors.count("model.embed_tokens.weight"), 0u);
  EXPECT_LT(part->nbytes(), whole->nbytes() / 2);
  // Its layers hold the same values as the whole model's.
  const std::string q = "model.layers.2.self_attn.q_proj.weight";
  EXPECT_TRUE(torch::equal(part->Get(q), whole->Get(q)));
}

TEST(LlamaSpanTest, ASpanOutsideTheModelIsRefused) {
  EXPECT_TRUE(LayerSpan({0, 5, true}).Validate(5).ok());
  EXPECT_TRUE(LayerSpan({0, 0, true}).Validate(5).ok());  // io only
  EXPECT_THAT(LayerSpan({3, 7, false}).Validate(5).message(),
              testing::HasSubstr("layer span [3, 7) is not within the "
                                 "model's 5 layers"));
  EXPECT_THAT(LayerSpan({2, 2, false}).Validate(5).message(),
              testing::HasSubstr("holds nothing"));
  LoadOptions options;
  options.span = {4, 9, false};
  auto refused = LoadModel(kHfDir, options);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), testing::HasSubstr("[4, 9)"));
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
