// Frozen bases in low precision (model/frozen_weight.h, model.base_dtype):
// the int8 and NF4 formats against an independent NumPy implementation
// (tests/reference/make_quant_fixtures.py -> quant_fixture.json), the
// FrozenLinear autograd node against a plain matmul, and whole models on a
// frozen base against plain models holding the same (dequantized) values.
#include "model/frozen_weight.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/file_util.h"
#include "model/chunked_loss.h"
#include "model/llama.h"
#include "model/loader.h"
#include "model/quant_codec.h"
#include "tests/model/llama_test_util.h"

namespace fedpeft {
namespace model {
namespace {

using test::kBinPath;
using test::kHfDir;

const std::string kQuantFixture =
    std::string(FEDPEFT_SOURCE_DIR) + "/tests/reference/quant_fixture.json";

nlohmann::json LoadQuantFixture() {
  auto text = ReadFileToString(kQuantFixture);
  EXPECT_TRUE(text.ok()) << text.status().ToString();
  return text.ok() ? nlohmann::json::parse(*text) : nlohmann::json();
}

template <typename T>
torch::Tensor FromJson(const nlohmann::json& values, torch::Dtype dtype) {
  return torch::tensor(values.get<std::vector<T>>()).to(dtype);
}

TEST(FrozenWeightTest, Int8MatchesTheNumPyReference) {
  nlohmann::json f = LoadQuantFixture();
  ASSERT_FALSE(f.is_null());
  const int64_t rows = f["rows"], cols = f["cols"];
  torch::Tensor w = FromJson<float>(f["w"], torch::kFloat32).view({rows, cols});
  FrozenWeight q = FrozenWeight::From(w, BaseDtype::kInt8);
  EXPECT_TRUE(torch::equal(
      q.data(), FromJson<int>(f["int8_q"], torch::kInt8).view({rows, cols})));
  EXPECT_TRUE(torch::equal(q.scale(),
                           FromJson<float>(f["int8_scale"], torch::kFloat32)));
  // Every value within half a step of its row.
  torch::Tensor err = (q.Materialize(torch::kFloat32) - w).abs();
  EXPECT_TRUE((err <= q.scale().unsqueeze(1) * 0.5001).all().item<bool>());
}

TEST(FrozenWeightTest, Nf4MatchesTheNumPyReference) {
  nlohmann::json f = LoadQuantFixture();
  ASSERT_FALSE(f.is_null());
  const int64_t rows = f["rows"], cols = f["cols"];
  torch::Tensor w = FromJson<float>(f["w"], torch::kFloat32).view({rows, cols});
  FrozenWeight q = FrozenWeight::From(w, BaseDtype::kNf4);
  EXPECT_TRUE(
      torch::equal(q.data(), FromJson<int>(f["nf4_packed"], torch::kUInt8)));
  EXPECT_TRUE(torch::equal(q.scale(),
                           FromJson<int>(f["nf4_absmax_codes"], torch::kInt8)));
  EXPECT_TRUE(torch::equal(
      q.scale2(), FromJson<float>(f["nf4_absmax_scale"], torch::kFloat32)));
  EXPECT_FLOAT_EQ(q.absmax_mean(), f["nf4_absmax_mean"].get<double>());
  torch::Tensor expected =
      FromJson<float>(f["nf4_values"], torch::kFloat32).view({rows, cols});
  EXPECT_LT(
      (q.Materialize(torch::kFloat32) - expected).abs().max().item<double>(),
      1e-6);
  // Any row range dequantizes to the same values as the whole matrix
  // (ranges that start and end inside a 64-value block).
  for (int64_t begin : {0, 1, 3, 8}) {
    const int64_t count = rows - begin;
    EXPECT_TRUE(
        torch::equal(q.Rows(begin, count, torch::kFloat32),
                     q.Materialize(torch::kFloat32).narrow(0, begin, count)))
        << "rows from " << begin;
  }
  // 4 bits a value (900 padded to 15 blocks of 64), 8 bits a block, 32 bits
  // a 256 blocks.
  EXPECT_EQ(q.nbytes(), 960 / 2 + 15 + 4);
}

TEST(FrozenWeightTest, ParseNamesTheChoices) {
  EXPECT_EQ(*ParseBaseDtype("nf4"), BaseDtype::kNf4);
  EXPECT_EQ(*ParseBaseDtype("bfloat16"), BaseDtype::kBFloat16);
  auto bad = ParseBaseDtype("fp4");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'fp4'"), std::string::npos);
  EXPECT_NE(bad.status().message().find("int8 or nf4"), std::string::npos);
}

// The CPU loops of quant_codec.h give the tensor ops' bits (the path off
// the CPU): lengths that end inside a block, an all-zero block, values
// exactly on a midpoint between two levels, large and tiny magnitudes.
TEST(FrozenWeightTest, CpuCodecEqualsTheTensorOps) {
  torch::manual_seed(11);
  for (int64_t n : {int64_t{1}, int64_t{63}, int64_t{64}, int64_t{1000},
                    int64_t{64 * 300 + 17}}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    torch::Tensor v = torch::randn({n}) * 0.05;
    if (n >= 192) {
      // Block 0: absmax 1 and every midpoint between two levels, exactly.
      v[0] = 1.0;
      for (int i = 0; i < 15; ++i) {
        v[1 + i] = (Nf4Levels()[i] + Nf4Levels()[i + 1]) / 2.0f;
      }
      v.narrow(0, 64, 64).zero_();  // block 1: all zero
      v[128] = -1e30;               // block 2: huge next to tiny
      v[129] = 1e-30;
    }
    auto [codes, absmax] = quant::Nf4Encode(v);
    auto [codes_ops, absmax_ops] = quant::ops::Nf4Encode(v);
    EXPECT_TRUE(torch::equal(codes, codes_ops));
    EXPECT_TRUE(torch::equal(absmax, absmax_ops));
    EXPECT_TRUE(torch::equal(quant::Nf4Decode(codes, absmax),
                             quant::ops::Nf4Decode(codes, absmax)));

    torch::Tensor rows = v.view({1, n}).repeat({3, 1});
    rows[1].zero_();  // an all-zero row, or one of scale 1 and ties:
    if (n >= 5) {     // round half to even, as torch::round
      rows[1].narrow(0, 0, 5).copy_(
          torch::tensor({127.0, 0.5, 1.5, 2.5, -2.5}));
    }
    rows[2].mul_(-1e3);
    auto [q, scale] = quant::Int8EncodeRows(rows);
    auto [q_ops, scale_ops] = quant::ops::Int8EncodeRows(rows);
    EXPECT_TRUE(torch::equal(q, q_ops));
    EXPECT_TRUE(torch::equal(scale, scale_ops));
    EXPECT_TRUE(torch::equal(quant::Int8DecodeRows(q, scale),
                             quant::ops::Int8DecodeRows(q, scale)));
  }
}

// FrozenLinear equals x W^T with W the dequantized matrix, forward and
// backward, whole and in blocks of rows (a block size that does not divide
// the rows).
TEST(FrozenWeightTest, FrozenLinearMatchesAPlainMatmul) {
  torch::manual_seed(3);
  torch::Tensor w = torch::randn({37, 24}) * 0.1;
  torch::Tensor bias = torch::randn({37});
  for (BaseDtype kind : {BaseDtype::kBFloat16, BaseDtype::kFloat16,
                         BaseDtype::kInt8, BaseDtype::kNf4}) {
    FrozenWeight f = FrozenWeight::From(w, kind);
    const torch::Tensor dense = f.Materialize(torch::kFloat32);
    for (int64_t block_elems : {int64_t{1} << 20, int64_t{10 * 24}}) {
      SCOPED_TRACE(std::string(BaseDtypeName(kind)) + " block " +
                   std::to_string(block_elems));
      torch::Tensor x1 = torch::randn({2, 5, 24}, torch::requires_grad());
      torch::Tensor x2 = x1.detach().clone().requires_grad_(true);
      torch::Tensor y1 = FrozenLinear(x1, f, bias, block_elems);
      torch::Tensor y2 = torch::linear(x2, dense, bias);
      EXPECT_TRUE(torch::allclose(y1, y2, 1e-5, 1e-6));
      torch::Tensor g = torch::randn_like(y1);
      y1.backward(g);
      y2.backward(g);
      EXPECT_TRUE(torch::allclose(x1.grad(), x2.grad(), 1e-5, 1e-6));
    }
  }
}

// Quantization error is what the format promises: NF4 relative error of a
// normal matrix around 10%, int8 well under 1%, bf16 under 0.4%.
TEST(FrozenWeightTest, ErrorOfANormalMatrix) {
  torch::manual_seed(5);
  torch::Tensor w = torch::randn({256, 512}) * 0.02;
  auto rel = [&w](BaseDtype kind) {
    torch::Tensor d = FrozenWeight::From(w, kind).Materialize(torch::kFloat32);
    return ((d - w).norm() / w.norm()).item<double>();
  };
  EXPECT_LT(rel(BaseDtype::kBFloat16), 0.004);
  EXPECT_LT(rel(BaseDtype::kInt8), 0.01);
  EXPECT_LT(rel(BaseDtype::kNf4), 0.12);
  EXPECT_GT(rel(BaseDtype::kNf4), 0.02);  // it did quantize
}

// A trainable delta for the model tests: y += x A^T B^T.
class TestDelta : public LinearDelta {
 public:
  TestDelta(int64_t in, int64_t out, int64_t seed) {
    torch::manual_seed(seed);
    a_ = register_parameter("a", torch::randn({4, in}) * 0.1);
    b_ = register_parameter("b", torch::randn({out, 4}) * 0.1);
  }
  torch::Tensor Forward(const torch::Tensor& x) override {
    return torch::matmul(torch::matmul(x, a_.t()), b_.t());
  }
  torch::Tensor DeltaWeight() override { return torch::matmul(b_, a_); }

 private:
  torch::Tensor a_, b_;
};

// Loss and gradients of deltas on every projection of layer 1 and the
// output of `model` on a fixed batch.
// `fused`: through the chunked output layer + cross entropy, with gradient
// checkpointing (the memory-saving path of training).
std::pair<double, std::vector<torch::Tensor>> LossAndGrads(LlamaModel& model,
                                                           bool fused = false) {
  const LlamaConfig& c = model.config();
  int64_t seed = 100;
  for (const std::string& p : ProjectionNames()) {
    std::vector<int64_t> shape = model.weights()->Shape(
        "model.layers.1." + ProjectionParent(p) + "." + p + ".weight");
    model.SetLinearDelta(
        1, p, std::make_shared<TestDelta>(shape[1], shape[0], seed++));
  }
  torch::Tensor tokens = torch::arange(3, 3 + 2 * 9, torch::kInt64)
                             .remainder(c.vocab_size)
                             .view({2, 9});
  torch::Tensor loss;
  if (fused) {
    model.set_gradient_checkpointing(true);
    torch::Tensor targets = torch::full({2, 9}, -100, torch::kInt64);
    targets.view({-1}).narrow(0, 0, 17).copy_(
        tokens.view({-1}).narrow(0, 1, 17));
    loss = LinearCrossEntropy(model.Hidden(tokens), model.lm_head(), targets,
                              /*chunk_rows=*/100);
  } else {
    torch::Tensor logits = model.Forward(tokens);
    loss = torch::nn::functional::cross_entropy(
        logits.view({-1, c.vocab_size}).narrow(0, 0, 17),
        tokens.view({-1}).narrow(0, 1, 17));
  }
  loss.backward();
  std::vector<torch::Tensor> grads;
  for (const torch::Tensor& p : model.parameters()) grads.push_back(p.grad());
  return {loss.item<double>(), grads};
}

// A model on a frozen base computes exactly what a plain model holding the
// dequantized values computes: forward, and the adapters' gradients through
// the custom backward. Both loaders.
TEST(FrozenBaseTest, GradientsEqualAPlainBaseOfTheSameValues) {
  for (const std::string& path : {kHfDir, kBinPath}) {
    for (BaseDtype kind :
         {BaseDtype::kBFloat16, BaseDtype::kInt8, BaseDtype::kNf4}) {
      SCOPED_TRACE(path + " " + BaseDtypeName(kind));
      LoadOptions opts;
      opts.base_dtype = kind;
      auto frozen = test::LoadOrDie(path, opts);
      ASSERT_NE(frozen, nullptr);
      ASSERT_FALSE(frozen->frozen.empty());
      auto plain = LlamaModel(frozen).ExportWeights();  // dequantized copies
      ASSERT_TRUE(plain->frozen.empty());
      LlamaModel on_plain(plain);
      auto [loss_p, grads_p] = LossAndGrads(on_plain);
      for (bool fused : {false, true}) {
        SCOPED_TRACE(fused ? "chunked loss, checkpointed" : "plain loss");
        LlamaModel on_frozen_again(frozen);
        auto [loss_f, grads_f] = LossAndGrads(on_frozen_again, fused);
        EXPECT_NEAR(loss_f, loss_p, 1e-5);
        ASSERT_EQ(grads_f.size(), 14u);
        ASSERT_EQ(grads_f.size(), grads_p.size());
        for (size_t i = 0; i < grads_f.size(); ++i) {
          ASSERT_TRUE(grads_f[i].defined());
          EXPECT_GT(grads_f[i].abs().max().item<double>(), 0.0);
          EXPECT_TRUE(torch::allclose(grads_f[i], grads_p[i], 1e-4, 1e-7))
              << "parameter " << i;
        }
      }
    }
  }
}

// The quantized base stays close to the float32 one, and holds a fraction
// of its bytes.
TEST(FrozenBaseTest, LogitsNearFloat32AndSmaller) {
  auto f32 = test::LoadOrDie(kHfDir);
  ASSERT_NE(f32, nullptr);
  const torch::Tensor ref = test::PromptLogits(f32);
  const double f32_bytes = static_cast<double>(f32->nbytes());
  struct Case {
    BaseDtype kind;
    // stories260K's logits span about +-20; observed max errors (x86-64):
    // bf16 0.07, int8 0.26, nf4 3.6 (dim 64: 4 bits hurt a tiny model most).
    double max_logit_err;
    double max_bytes;  // share of the float32 weights
  };
  for (const Case& c :
       {Case{BaseDtype::kBFloat16, 0.2, 0.51},
        Case{BaseDtype::kInt8, 0.5, 0.35}, Case{BaseDtype::kNf4, 6.0, 0.20}}) {
    SCOPED_TRACE(BaseDtypeName(c.kind));
    LoadOptions opts;
    opts.base_dtype = c.kind;
    auto w = test::LoadOrDie(kHfDir, opts);
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->base_dtype, c.kind);
    const double err = test::MaxAbsDiff(test::PromptLogits(w), ref);
    EXPECT_LT(err, c.max_logit_err) << "max |logit error|";
    std::printf("%s max |logit error| %.4f, bytes %.3f of float32\n",
                BaseDtypeName(c.kind), err, w->nbytes() / f32_bytes);
    EXPECT_GT(err, 0.0);
    EXPECT_LT(w->nbytes() / f32_bytes, c.max_bytes);
  }
}

// A frozen base saves (dequantized, in the dtype asked for) and loads back.
TEST(FrozenBaseTest, SavesAsAHuggingFaceFolder) {
  LoadOptions opts;
  opts.base_dtype = BaseDtype::kInt8;
  auto w = test::LoadOrDie(kHfDir, opts);
  ASSERT_NE(w, nullptr);
  test::TempDir dir;
  ASSERT_TRUE(SaveHfModel(*w, dir.path(), torch::kBFloat16).ok());
  auto back = test::LoadOrDie(dir.path());
  ASSERT_NE(back, nullptr);
  const std::string q = "model.layers.2.self_attn.k_proj.weight";
  EXPECT_TRUE(torch::allclose(back->Get(q), w->Materialize(q), 1e-2, 1e-3));
  auto text = ReadFileToString(dir.path() + "/config.json");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(nlohmann::json::parse(*text)["torch_dtype"], "bfloat16");
}

// The [begin, end) addresses /proc/self/maps gives `path`'s mappings.
std::vector<std::pair<uintptr_t, uintptr_t>> MappingsOf(
    const std::string& path) {
  std::vector<std::pair<uintptr_t, uintptr_t>> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.size() < path.size() ||
        line.compare(line.size() - path.size(), path.size(), path) != 0) {
      continue;
    }
    const size_t dash = line.find('-');
    const size_t space = line.find(' ');
    out.emplace_back(
        std::stoull(line.substr(0, dash), nullptr, 16),
        std::stoull(line.substr(dash + 1, space - dash - 1), nullptr, 16));
  }
  return out;
}

// A bfloat16 checkpoint held as base_dtype bfloat16 stays in the file's
// pages (LoadOptions::map_weights): the projections and embeddings are
// tensors over the read-only mapping, which outlives the loader, and the
// model computes what the copied, packed base computes.
TEST(FrozenBaseTest, BaseInTheFileDtypeStaysInTheMappedFile) {
  auto f32 = test::LoadOrDie(kHfDir);
  ASSERT_NE(f32, nullptr);
  test::TempDir dir;
  ASSERT_TRUE(SaveHfModel(*f32, dir.path(), torch::kBFloat16).ok());
  LoadOptions opts;
  opts.base_dtype = BaseDtype::kBFloat16;
  auto mapped = test::LoadOrDie(dir.path(), opts);
  opts.map_weights = false;
  auto copied = test::LoadOrDie(dir.path(), opts);
  ASSERT_NE(mapped, nullptr);
  ASSERT_NE(copied, nullptr);
  EXPECT_EQ(copied->mapped_bytes, 0);
  const LlamaConfig& c = mapped->config;
  const int64_t embed = c.vocab_size * c.dim * 2;  // tied: held once
  EXPECT_GT(mapped->mapped_bytes, embed);
  EXPECT_LE(mapped->mapped_bytes, mapped->nbytes());

  const auto ranges = MappingsOf(dir.path() + "/model.safetensors");
  ASSERT_FALSE(ranges.empty()) << "the file is not mapped after the load";
  auto in_file = [&](const void* p) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    for (const auto& [begin, end] : ranges) {
      if (a >= begin && a < end) return true;
    }
    return false;
  };
  const std::string q = "model.layers.2.self_attn.q_proj.weight";
  ASSERT_EQ(mapped->frozen.count(q), 1u) << "q_proj was packed";
  EXPECT_TRUE(in_file(mapped->frozen.at(q).data().data_ptr()));
  EXPECT_TRUE(in_file(
      mapped->frozen.at("model.embed_tokens.weight").data().data_ptr()));
  ASSERT_EQ(copied->frozen.count(q), 0u);
  EXPECT_FALSE(in_file(
      copied->frozen.at("model.embed_tokens.weight").data().data_ptr()));

  for (bool fused : {false, true}) {
    SCOPED_TRACE(fused ? "chunked loss, checkpointed" : "plain loss");
    LlamaModel a(mapped), b(copied);
    auto [loss_m, grads_m] = LossAndGrads(a, fused);
    auto [loss_c, grads_c] = LossAndGrads(b, fused);
    EXPECT_NEAR(loss_m, loss_c, 1e-5);
    ASSERT_EQ(grads_m.size(), grads_c.size());
    for (size_t i = 0; i < grads_m.size(); ++i) {
      EXPECT_TRUE(torch::allclose(grads_m[i], grads_c[i], 1e-4, 1e-7))
          << "parameter " << i;
    }
  }
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
