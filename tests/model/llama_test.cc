#include "model/llama.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/file_util.h"
#include "model/generate.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "tests/model/llama_test_util.h"

namespace fedpeft {
namespace model {
namespace {

using ::testing::HasSubstr;
using namespace test;  // NOLINT(build/namespaces)

// A test delta: x @ D^T for a fixed random D, D a registered parameter.
class DenseDelta : public LinearDelta {
 public:
  DenseDelta(int64_t out, int64_t in, uint64_t seed, double scale = 0.02) {
    auto gen = at::detail::createCPUGenerator(seed);
    d_ = register_parameter("D", torch::randn({out, in}, gen) * scale);
  }
  torch::Tensor Forward(const torch::Tensor& x) override {
    return torch::matmul(x, d_.t());
  }
  torch::Tensor DeltaWeight() override { return d_.detach().clone(); }
  torch::Tensor& d() { return d_; }

 private:
  torch::Tensor d_;
};

// A test sublayer adapter: h * (1 + s) with a learnable scalar s.
class ScaleAdapter : public SublayerAdapter {
 public:
  explicit ScaleAdapter(double s) {
    s_ = register_parameter("s", torch::full({1}, s));
  }
  torch::Tensor Forward(const torch::Tensor& h) override {
    return h * (1 + s_);
  }

 private:
  torch::Tensor s_;
};

TEST(LlamaTest, HfFolderAndLlama2cBinGiveSameLogits) {
  auto hf = LoadOrDie(kHfDir);
  auto bin = LoadOrDie(kBinPath);
  ASSERT_TRUE(hf && bin);
  EXPECT_EQ(bin->config.dim, 64);
  EXPECT_EQ(bin->config.hidden_dim, 172);
  EXPECT_EQ(bin->config.n_layers, 5);
  EXPECT_EQ(bin->config.n_heads, 8);
  EXPECT_EQ(bin->config.n_kv_heads, 4);
  EXPECT_EQ(bin->config.vocab_size, 512);
  EXPECT_EQ(bin->config.max_seq_len, 512);
  EXPECT_TRUE(bin->config.tie_embeddings);
  EXPECT_EQ(hf->config.norm_eps, 1e-5);

  torch::Tensor a = PromptLogits(hf);
  torch::Tensor b = PromptLogits(bin);
  ASSERT_EQ(a.sizes(), torch::IntArrayRef({1, 5, 512}));
  EXPECT_EQ(a.scalar_type(), torch::kFloat32);
  EXPECT_LT(MaxAbsDiff(a, b), kLogitTol);
  // Same tensors too (the .bin's q/k rows were permuted into HF order).
  for (const auto& [name, t] : hf->tensors) {
    EXPECT_TRUE(torch::equal(t, bin->Get(name))) << name;
  }

  // The comparison is sensitive to the rotary layout: un-permuting q/k back
  // to interleaved pairs changes the logits.
  auto wrong = std::make_shared<LlamaWeights>(*bin);
  for (int64_t l = 0; l < wrong->config.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    wrong->tensors[p + "q_proj.weight"] =
        PermuteHalvesToInterleaved(bin->Get(p + "q_proj.weight"), 8);
    wrong->tensors[p + "k_proj.weight"] =
        PermuteHalvesToInterleaved(bin->Get(p + "k_proj.weight"), 4);
  }
  EXPECT_GT(MaxAbsDiff(a, PromptLogits(wrong)), 1e-2);
}

TEST(LlamaTest, PermutationsRoundTripAndMatchTransformers) {
  torch::Tensor w = torch::randn({64, 10});
  torch::Tensor halves = PermuteInterleavedToHalves(w, 8);
  EXPECT_FALSE(torch::equal(halves, w));
  EXPECT_TRUE(torch::equal(PermuteHalvesToInterleaved(halves, 8), w));
  EXPECT_TRUE(torch::equal(
      PermuteInterleavedToHalves(PermuteHalvesToInterleaved(w, 4), 4), w));
  // One head of size 4: interleaved pairs (r0, r1), (r2, r3) become the
  // halves [r0, r2 | r1, r3] (transformers' convert_llama_weights permute).
  torch::Tensor rows = torch::arange(8, torch::kFloat32).view({8, 1});
  torch::Tensor got = PermuteInterleavedToHalves(rows, 2).view({8});
  EXPECT_TRUE(torch::equal(
      got, torch::tensor({0.f, 2.f, 1.f, 3.f, 4.f, 6.f, 5.f, 7.f})));
}

TEST(LlamaTest, GreedyGenerationIsDeterministicAndCacheMatchesFullForward) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_TRUE(w);
  LlamaModel model(w);
  GenerateOptions opts;
  opts.max_new_tokens = 40;
  opts.stop_at_eos = false;
  std::vector<int64_t> first = Generate(model, kPrompt, opts);
  std::vector<int64_t> second = Generate(model, kPrompt, opts);
  ASSERT_EQ(first.size(), 40u);
  EXPECT_EQ(first, second);

  // Greedy without a cache: re-run the whole sequence for every token.
  torch::NoGradGuard no_grad;
  std::vector<int64_t> seq = kPrompt;
  std::vector<int64_t> uncached;
  for (int i = 0; i < 40; ++i) {
    torch::Tensor logits =
        model.Forward(torch::tensor(seq, torch::kInt64).view({1, -1}));
    int64_t next = logits[0][logits.size(1) - 1].argmax().item<int64_t>();
    uncached.push_back(next);
    seq.push_back(next);
  }
  EXPECT_EQ(first, uncached);
  // A real story, not a stuck loop: many distinct tokens.
  EXPECT_GT(std::set<int64_t>(first.begin(), first.end()).size(), 15u);
}

TEST(LlamaTest, KvCacheInChunksMatchesFullForward) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_TRUE(w);
  torch::NoGradGuard no_grad;
  LlamaModel model(w);
  torch::Tensor tokens =
      torch::tensor({1, 403, 407, 261, 378, 30, 22, 90, 301}, torch::kInt64)
          .view({1, -1});
  torch::Tensor full = model.Forward(tokens);
  KvCache cache;
  torch::Tensor a = model.Forward(tokens.narrow(1, 0, 3), &cache);
  torch::Tensor b = model.Forward(tokens.narrow(1, 3, 4), &cache);  // T > 1
  torch::Tensor c = model.Forward(tokens.narrow(1, 7, 2), &cache);
  EXPECT_EQ(cache.length, 9);
  EXPECT_LT(MaxAbsDiff(torch::cat({a, b, c}, 1), full), kLogitTol);
  // Long sequences run causal attention in query blocks; token-by-token
  // decoding (one query, no mask) must agree with them.
  torch::Tensor long_tokens =
      torch::randint(3, 512, {2, 150}, torch::kInt64).index_put_({"...", 0}, 1);
  torch::Tensor long_full = model.Forward(long_tokens);
  KvCache step_cache;
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < 150; ++t) {
    steps.push_back(model.Forward(long_tokens.narrow(1, t, 1), &step_cache));
  }
  EXPECT_LT(MaxAbsDiff(torch::cat(steps, 1), long_full), 1e-4);
  KvCache chunk_cache;  // blocks that start after cached tokens
  torch::Tensor head =
      model.Forward(long_tokens.narrow(1, 0, 20), &chunk_cache);
  torch::Tensor tail =
      model.Forward(long_tokens.narrow(1, 20, 130), &chunk_cache);
  EXPECT_LT(MaxAbsDiff(torch::cat({head, tail}, 1), long_full), 1e-4);

  // The context limit is enforced.
  KvCache big;
  big.length = w->config.max_seq_len;
  big.k.resize(w->config.n_layers);
  big.v.resize(w->config.n_layers);
  EXPECT_THROW(model.Forward(tokens.narrow(1, 0, 1), &big), c10::Error);
}

TEST(LlamaTest, SamplingIsDeterministicPerSeed) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_TRUE(w);
  LlamaModel model(w);
  GenerateOptions opts;
  opts.max_new_tokens = 30;
  opts.temperature = 1.0;
  opts.top_p = 0.9;
  opts.stop_at_eos = false;
  opts.seed = 42;
  auto a = Generate(model, kPrompt, opts);
  auto b = Generate(model, kPrompt, opts);
  EXPECT_EQ(a, b);
  opts.seed = 43;
  EXPECT_NE(Generate(model, kPrompt, opts), a);
  // Context full: a prompt as long as the context yields nothing, and
  // generation stops at the context.
  std::vector<int64_t> long_prompt(w->config.max_seq_len - 3, 261);
  opts.max_new_tokens = 100;
  EXPECT_EQ(Generate(model, long_prompt, opts).size(), 3u);
}

TEST(LlamaTest, TruncatedOrPaddedBinIsCorruptionNamingTheFile) {
  TempDir dir;
  const std::string path = dir.File("stories260K.bin");
  auto bytes = ReadFileToString(kBinPath);
  ASSERT_TRUE(bytes.ok());
  const std::string expected = std::to_string(bytes->size());

  ASSERT_TRUE(WriteFileAtomic(path, bytes->substr(0, bytes->size() - 4)).ok());
  auto r = LoadLlama2cModel(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(r.status().message(), HasSubstr(path));
  EXPECT_THAT(r.status().message(),
              HasSubstr("is " + std::to_string(bytes->size() - 4) +
                        " bytes, expected " + expected));

  ASSERT_TRUE(WriteFileAtomic(path, *bytes + "junk").ok());
  r = LoadModel(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(r.status().message(), HasSubstr("expected " + expected));

  ASSERT_TRUE(WriteFileAtomic(path, bytes->substr(0, 10)).ok());
  r = LoadModel(path);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("shorter than the 28-byte"));

  std::string bad_header = *bytes;
  bad_header[3 * 4] = 7;  // 7 heads do not divide dim 64
  ASSERT_TRUE(WriteFileAtomic(path, bad_header).ok());
  r = LoadModel(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(r.status().message(), HasSubstr("n_heads"));
}

TEST(LlamaTest, HfFolderMissingTensorIsNamed) {
  TempDir dir;
  TensorMap t = ShippedTensors();
  t.erase("model.layers.2.mlp.up_proj.weight");
  WriteHfFolder(dir, t);
  auto r = LoadHfModel(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(),
              HasSubstr("tensor 'model.layers.2.mlp.up_proj.weight' is "
                        "missing (expected shape [172, 64])"));
  EXPECT_THAT(r.status().message(), HasSubstr("maybe wrong base model?"));
}

TEST(LlamaTest, HfFolderWrongShapeOrExtraTensorIsNamedWithHint) {
  TempDir dir;
  TensorMap t = ShippedTensors();
  t["model.layers.1.self_attn.k_proj.weight"] = torch::zeros({64, 64});
  t["model.layers.9.mlp.up_proj.weight"] = torch::zeros({2});
  WriteHfFolder(dir, t);
  auto r = LoadHfModel(dir.path());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(),
              HasSubstr("tensor 'model.layers.1.self_attn.k_proj.weight' has "
                        "shape [64, 64], expected [32, 64]"));
  EXPECT_THAT(r.status().message(),
              HasSubstr("unexpected tensor 'model.layers.9.mlp.up_proj"));
  EXPECT_THAT(r.status().message(), HasSubstr("maybe wrong base model?"));
}

TEST(LlamaTest, F16AndBf16FoldersLoadCloseToF32) {
  auto f32 = LoadOrDie(kHfDir);
  ASSERT_TRUE(f32);
  torch::Tensor ref = PromptLogits(f32);
  for (torch::Dtype dtype : {torch::kFloat16, torch::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    TempDir dir;
    TensorMap t = ShippedTensors();
    for (auto& [name, tensor] : t) tensor = tensor.to(dtype);
    WriteHfFolder(dir, t);
    auto st = ReadSafetensors(dir.File("model.safetensors"));
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(st->tensors.begin()->second.scalar_type(), dtype);

    auto w = LoadOrDie(dir.path());  // converted to float32
    ASSERT_TRUE(w);
    EXPECT_EQ(w->Get("model.norm.weight").scalar_type(), torch::kFloat32);
    torch::Tensor got = PromptLogits(w);
    const double tol = dtype == torch::kFloat16 ? 0.02 : 0.15;
    EXPECT_LT(MaxAbsDiff(got, ref), tol);
    EXPECT_GT(MaxAbsDiff(got, ref), 0.0);  // really a lossy copy
    EXPECT_TRUE(torch::equal(got.argmax(-1), ref.argmax(-1)));
  }
  // Computing in bfloat16 still returns float32 logits close to F32.
  LoadOptions opts;
  opts.dtype = torch::kBFloat16;
  auto bf = LoadOrDie(kHfDir, opts);
  ASSERT_TRUE(bf);
  EXPECT_EQ(bf->Get("model.embed_tokens.weight").scalar_type(),
            torch::kBFloat16);
  torch::Tensor got = PromptLogits(bf);
  EXPECT_EQ(got.scalar_type(), torch::kFloat32);
  EXPECT_LT(MaxAbsDiff(got, ref), 0.5);
}

TEST(LlamaTest, SaveHfModelReloadsIdentically) {
  auto w = LoadOrDie(kBinPath);
  ASSERT_TRUE(w);
  TempDir dir;
  const std::string out = dir.File("exported");
  ASSERT_TRUE(SaveHfModel(*w, out).ok());
  EXPECT_TRUE(PathExists(JoinPath(out, "config.json")));
  auto back = LoadOrDie(out);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->config.ToHfJson(), w->config.ToHfJson());
  EXPECT_TRUE(torch::equal(PromptLogits(back), PromptLogits(w)));
  // The tied head is not written.
  auto st = ReadSafetensors(JoinPath(out, "model.safetensors"));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->tensors.count("lm_head.weight"), 0u);
}

TEST(LlamaTest, UntiedQwen2StyleModelSavesAndReloads) {
  LlamaConfig c;
  c.dim = 32;
  c.hidden_dim = 48;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 64;
  c.max_seq_len = 16;
  c.qkv_bias = true;
  auto w = RandomLlamaWeights(c, 5);
  ASSERT_TRUE(w->Validate().ok()) << w->Validate().ToString();
  EXPECT_EQ(w->tensors.count("lm_head.weight"), 1u);
  EXPECT_EQ(w->tensors.count("model.layers.1.self_attn.k_proj.bias"), 1u);
  TempDir dir;
  ASSERT_TRUE(SaveHfModel(*w, dir.path()).ok());
  auto back = LoadOrDie(dir.path());
  ASSERT_TRUE(back);
  EXPECT_TRUE(back->config.qkv_bias);
  EXPECT_FALSE(back->config.tie_embeddings);
  torch::Tensor tokens = torch::tensor({{1, 5, 9, 3}}, torch::kInt64);
  torch::NoGradGuard no_grad;
  LlamaModel a(w), b(back);
  EXPECT_TRUE(torch::equal(a.Forward(tokens), b.Forward(tokens)));
  // The bias takes part: zeroing it changes the output.
  auto no_bias = std::make_shared<LlamaWeights>(*w);
  no_bias->tensors["model.layers.0.self_attn.q_proj.bias"] = torch::zeros({32});
  LlamaModel m(no_bias);
  EXPECT_GT(MaxAbsDiff(m.Forward(tokens), a.Forward(tokens)), 1e-6);
}

TEST(LlamaTest, LoadModelDispatchAndDevices) {
  TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir.File("m.gguf"), "GGUF").ok());
  ASSERT_TRUE(WriteFileAtomic(dir.File("m.pt"), "x").ok());
  auto r = LoadModel(dir.File("m.gguf"));  // a GGUF file cut after its magic
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(r.status().message(), HasSubstr("m.gguf"));
  r = LoadModel(dir.File("m.pt"));
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("m.pt"));
  r = LoadModel(dir.File("absent"));
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  r = LoadModel(dir.path());  // a folder without config.json
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("config.json"));

  EXPECT_TRUE(ParseDevice("cpu").ok());
  auto d = ParseDevice("gpu0");
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(d.status().message(), HasSubstr("'gpu0'"));
  EXPECT_FALSE(ParseDevice("cuda:x").ok());
  LoadOptions opts;
  opts.device = "tpu";
  EXPECT_FALSE(LoadModel(kHfDir, opts).ok());
}

TEST(LlamaTest, BaseWeightsAreFrozenAndOnlySlotsAreParameters) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_TRUE(w);
  for (const auto& [name, t] : w->tensors) {
    EXPECT_FALSE(t.requires_grad()) << name;
  }
  LlamaModel model(w);
  EXPECT_TRUE(model.parameters().empty());
  model.SetLinearDelta(0, "q_proj", std::make_shared<DenseDelta>(64, 64, 1));
  model.SetLinearDelta(4, "down_proj",
                       std::make_shared<DenseDelta>(64, 172, 2));
  model.SetSublayerAdapter(2, "mlp", std::make_shared<ScaleAdapter>(0.1));
  const std::vector<std::string> keys = model.named_parameters().keys();
  EXPECT_THAT(keys, ::testing::UnorderedElementsAre("layers_0_q_proj.D",
                                                    "layers_4_down_proj.D",
                                                    "layers_2_mlp_adapter.s"));
  // Replacing and clearing slots keeps the registry in step.
  model.SetLinearDelta(0, "q_proj", std::make_shared<DenseDelta>(64, 64, 3));
  model.SetLinearDelta(4, "down_proj", nullptr);
  EXPECT_EQ(model.parameters().size(), 2u);
  EXPECT_EQ(model.GetLinearDelta(4, "down_proj"), nullptr);
  EXPECT_NE(model.GetSublayerAdapter(2, "mlp"), nullptr);
  EXPECT_THROW(model.SetLinearDelta(5, "q_proj", nullptr), c10::Error);
  EXPECT_THROW(model.SetLinearDelta(0, "qkv", nullptr), c10::Error);
}

TEST(LlamaTest, MergeMatchesUnmergedAndUnmergeRestoresBase) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_TRUE(w);
  torch::NoGradGuard no_grad;
  LlamaModel model(w);
  const torch::Tensor base = model.Forward(PromptTensor());
  const torch::Tensor q0 = w->Get("model.layers.0.self_attn.q_proj.weight");

  auto dq = std::make_shared<DenseDelta>(64, 64, 11);
  model.SetLinearDelta(0, "q_proj", dq);
  model.SetLinearDelta(1, "k_proj", std::make_shared<DenseDelta>(32, 64, 12));
  model.SetLinearDelta(2, "v_proj", std::make_shared<DenseDelta>(32, 64, 13));
  model.SetLinearDelta(3, "o_proj", std::make_shared<DenseDelta>(64, 64, 14));
  model.SetLinearDelta(4, "gate_proj",
                       std::make_shared<DenseDelta>(172, 64, 15));
  model.SetLinearDelta(4, "up_proj", std::make_shared<DenseDelta>(172, 64, 16));
  model.SetLinearDelta(1, "down_proj",
                       std::make_shared<DenseDelta>(64, 172, 17));
  const torch::Tensor unmerged = model.Forward(PromptTensor());
  EXPECT_GT(MaxAbsDiff(unmerged, base), 1e-3);  // the deltas matter

  model.Merge();
  model.Merge();  // idempotent
  EXPECT_TRUE(model.merged());
  EXPECT_LT(MaxAbsDiff(model.Forward(PromptTensor()), unmerged), kLogitTol);
  EXPECT_TRUE(
      torch::allclose(model.ProjectionWeight(0, "q_proj"), q0 + dq->d()));
  // The shared weights are untouched.
  EXPECT_TRUE(
      torch::equal(w->Get("model.layers.0.self_attn.q_proj.weight"), q0));

  // Export folds the deltas in; a plain model over it matches.
  auto exported = model.ExportWeights();
  ASSERT_TRUE(exported->Validate().ok());
  EXPECT_LT(MaxAbsDiff(PromptLogits(exported), unmerged), kLogitTol);

  model.Unmerge();
  EXPECT_FALSE(model.merged());
  EXPECT_TRUE(torch::equal(model.ProjectionWeight(0, "q_proj"), q0));
  EXPECT_TRUE(torch::equal(model.Forward(PromptTensor()), unmerged));
  // Unmerged export holds the base weights only.
  auto plain = model.ExportWeights();
  EXPECT_TRUE(
      torch::equal(plain->Get("model.layers.0.self_attn.q_proj.weight"), q0));
  for (const std::string& p : ProjectionNames()) {
    for (int64_t l = 0; l < 5; ++l) model.SetLinearDelta(l, p, nullptr);
  }
  EXPECT_TRUE(torch::equal(model.Forward(PromptTensor()), base));
}

TEST(LlamaTest, DeltaGradientEqualsWeightGradient) {
  // d loss / d D for y = x W^T + x D^T at D = 0 equals d loss / d W; the
  // latter from a model whose (unpacked) q_proj weight is a leaf.
  auto w = LoadOrDie(kHfDir);
  ASSERT_TRUE(w);
  const std::string q = "model.layers.1.self_attn.q_proj.weight";
  const std::string up = "model.layers.3.mlp.up_proj.weight";
  LlamaModel packed(w);
  auto dq = std::make_shared<DenseDelta>(64, 64, 1, 0.0);
  auto dup = std::make_shared<DenseDelta>(172, 64, 2, 0.0);
  packed.SetLinearDelta(1, "q_proj", dq);
  packed.SetLinearDelta(3, "up_proj", dup);
  torch::Tensor logits = packed.Forward(PromptTensor());
  logits.pow(2).mean().backward();

  auto leafy = std::make_shared<LlamaWeights>(*w);
  for (auto& [name, t] : leafy->tensors) t = t.clone();  // unpacked
  leafy->tensors[q].requires_grad_(true);
  leafy->tensors[up].requires_grad_(true);
  LlamaModel reference(leafy);
  torch::Tensor ref_logits = reference.Forward(PromptTensor());
  EXPECT_LT(MaxAbsDiff(ref_logits, logits), kLogitTol);
  ref_logits.pow(2).mean().backward();
  ASSERT_TRUE(dq->d().grad().defined());
  EXPECT_GT(dq->d().grad().abs().max().item<double>(), 0.0);
  // float32 accumulation order differs between the fused and unfused
  // paths: compare relative to the gradient's size.
  for (auto [delta, name] : {std::make_pair(dq, q), std::make_pair(dup, up)}) {
    const torch::Tensor& want = leafy->tensors[name].grad();
    ASSERT_TRUE(delta->d().grad().defined()) << name;
    EXPECT_GT(want.norm().item<double>(), 1e-3) << name;
    EXPECT_LT(MaxAbsDiff(delta->d().grad(), want),
              1e-5 * want.norm().item<double>())
        << name;
  }
}

TEST(LlamaTest, FirstTrainableLayerFreezesLowerLayers) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_TRUE(w);
  auto run = [&](int64_t first, std::vector<std::shared_ptr<DenseDelta>>* ds) {
    LlamaModel model(w);
    for (int64_t l = 0; l < 5; ++l) {
      ds->push_back(std::make_shared<DenseDelta>(32, 64, 100 + l));
      model.SetLinearDelta(l, "v_proj", ds->back());
    }
    model.set_first_trainable_layer(first);
    torch::Tensor logits = model.Forward(PromptTensor());
    logits.pow(2).mean().backward();
    return logits.detach();
  };
  std::vector<std::shared_ptr<DenseDelta>> all, frozen;
  torch::Tensor a = run(0, &all);
  torch::Tensor b = run(3, &frozen);
  EXPECT_LT(MaxAbsDiff(a, b), 1e-6);
  for (int l = 0; l < 3; ++l) {
    EXPECT_FALSE(frozen[l]->d().grad().defined()) << "layer " << l;
    EXPECT_TRUE(all[l]->d().grad().defined()) << "layer " << l;
  }
  for (int l = 3; l < 5; ++l) {
    ASSERT_TRUE(frozen[l]->d().grad().defined()) << "layer " << l;
    EXPECT_TRUE(torch::allclose(frozen[l]->d().grad(), all[l]->d().grad()));
  }
}

TEST(LlamaTest, SublayerAdaptersApplyBeforeResidual) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_TRUE(w);
  torch::NoGradGuard no_grad;
  LlamaModel model(w);
  const torch::Tensor base = model.Forward(PromptTensor());
  model.SetSublayerAdapter(1, "attn", std::make_shared<ScaleAdapter>(0.0));
  model.SetSublayerAdapter(3, "mlp", std::make_shared<ScaleAdapter>(0.0));
  EXPECT_TRUE(torch::equal(model.Forward(PromptTensor()), base));
  model.SetSublayerAdapter(3, "mlp", std::make_shared<ScaleAdapter>(0.5));
  EXPECT_GT(MaxAbsDiff(model.Forward(PromptTensor()), base), 1e-3);
  model.SetSublayerAdapter(3, "mlp", nullptr);
  EXPECT_TRUE(torch::equal(model.Forward(PromptTensor()), base));
}

TEST(LlamaTest, RandomWeightsAreDeterministicAndPackingIsTransparent) {
  LlamaConfig c;
  c.dim = 48;
  c.hidden_dim = 64;
  c.n_layers = 2;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.vocab_size = 40;
  c.max_seq_len = 32;
  c.tie_embeddings = true;
  auto a = RandomLlamaWeights(c, 9);
  auto b = RandomLlamaWeights(c, 9);
  auto other = RandomLlamaWeights(c, 10);
  ASSERT_TRUE(a->Validate().ok());
  for (const auto& [name, t] : a->tensors) {
    EXPECT_TRUE(torch::equal(t, b->Get(name))) << name;
  }
  EXPECT_FALSE(torch::equal(a->Get("model.embed_tokens.weight"),
                            other->Get("model.embed_tokens.weight")));
  EXPECT_TRUE(torch::equal(a->Get("model.norm.weight"), torch::ones({48})));
  // Unpacked copies (separate q/k/v buffers) take the unfused path.
  auto unpacked = std::make_shared<LlamaWeights>(*a);
  for (auto& [name, t] : unpacked->tensors) t = t.clone();
  torch::Tensor tokens = torch::randint(0, 40, {3, 7}, torch::kInt64);
  torch::NoGradGuard no_grad;
  LlamaModel packed_model(a), unpacked_model(unpacked);
  EXPECT_LT(
      MaxAbsDiff(packed_model.Forward(tokens), unpacked_model.Forward(tokens)),
      kLogitTol);
  // Validate names a missing tensor.
  unpacked->tensors.erase("model.layers.1.mlp.down_proj.weight");
  Status s = unpacked->Validate();
  EXPECT_THAT(s.message(), HasSubstr("model.layers.1.mlp.down_proj.weight"));
}

TEST(LlamaTest, BatchRowsAreIndependent) {
  auto w = LoadOrDie(kHfDir);
  ASSERT_TRUE(w);
  torch::NoGradGuard no_grad;
  LlamaModel model(w);
  torch::Tensor two = torch::tensor(
      {{1, 403, 407, 261, 378}, {1, 30, 22, 90, 301}}, torch::kInt64);
  torch::Tensor both = model.Forward(two);
  EXPECT_LT(MaxAbsDiff(both[0], model.Forward(two.narrow(0, 0, 1))[0]),
            kLogitTol);
  EXPECT_LT(MaxAbsDiff(both[1], model.Forward(two.narrow(0, 1, 1))[0]),
            kLogitTol);
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
