// The GGUF writer, reader and model export/load: Q8_0 against a NumPy
// reference, the byte layout (header, alignment, offsets), bad input named
// precisely, and models of each architecture round-tripping exactly.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "model/gguf_export.h"
#include "model/gguf_reader.h"
#include "model/gguf_writer.h"
#include "model/loader.h"
#include "model/safetensors.h"
#include "model/tokenizer.h"
#include "tests/model/llama_test_util.h"

namespace fedpeft {
namespace model {
namespace {

using test::TempDir;
using ::testing::HasSubstr;

uint32_t U32At(const std::string& s, size_t pos) {
  uint32_t v = 0;
  std::memcpy(&v, s.data() + pos, 4);
  return v;
}

uint64_t U64At(const std::string& s, size_t pos) {
  uint64_t v = 0;
  std::memcpy(&v, s.data() + pos, 8);
  return v;
}

std::string FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

TEST(GgufWriterTest, Q8_0MatchesNumpyReference) {
  auto text = ReadFileToString(std::string(FEDPEFT_SOURCE_DIR) +
                               "/tests/reference/gguf_q8_0_fixture.json");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const nlohmann::json j = nlohmann::json::parse(*text);
  std::vector<float> x;
  for (double v : j["values"]) x.push_back(static_cast<float>(v));
  ASSERT_EQ(x.size() % 32, 0u);
  const std::string want = FromHex(j["q8_0_hex"].get<std::string>());
  const std::string got =
      QuantizeQ8_0(x.data(), static_cast<int64_t>(x.size()));
  ASSERT_EQ(got.size(), want.size());
  for (size_t b = 0; b < got.size() / kQ8_0BlockBytes; ++b) {
    EXPECT_EQ(got.substr(b * 34, 34), want.substr(b * 34, 34)) << "block " << b;
  }
}

TEST(GgufWriterTest, HeaderMetadataAndAlignedTensorData) {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetUint32("llama.block_count", 5);
  w.SetUint32("llama.block_count", 6);  // replaces, keeps the position
  w.SetFloat32Array("a", {1.5f, -2.0f});
  const torch::Tensor a = torch::arange(3, torch::kFloat32);
  const torch::Tensor b = torch::randn({5, 7});
  const torch::Tensor c = torch::randn({2, 64});
  ASSERT_TRUE(w.AddTensor("a3", a, GgufTensorType::kF32).ok());
  ASSERT_TRUE(w.AddTensor("b57", b, GgufTensorType::kF16).ok());
  ASSERT_TRUE(w.AddTensor("c264", c, GgufTensorType::kQ8_0).ok());
  const std::string f = w.Serialize();

  // Header: magic, version 3, 3 tensors, 3 keys; the first key spelled out.
  EXPECT_EQ(f.substr(0, 4), "GGUF");
  EXPECT_EQ(U32At(f, 4), 3u);
  EXPECT_EQ(U64At(f, 8), 3u);
  EXPECT_EQ(U64At(f, 16), 3u);
  EXPECT_EQ(U64At(f, 24), std::string("general.architecture").size());
  EXPECT_EQ(f.substr(32, 20), "general.architecture");
  EXPECT_EQ(U32At(f, 52), 8u);  // string
  EXPECT_EQ(U64At(f, 56), 5u);
  EXPECT_EQ(f.substr(64, 5), "llama");
  EXPECT_EQ(f.size() % kGgufAlignment, 0u);

  auto r = GgufReader::Parse(f, "mem.gguf");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto blocks = r->GetInt("llama.block_count", 0, 100);
  ASSERT_TRUE(blocks.ok());
  EXPECT_EQ(*blocks, 6);
  EXPECT_EQ(r->metadata().size(), 3u);
  auto arr = r->GetNumberArray("a");
  ASSERT_TRUE(arr.ok());
  EXPECT_EQ(*arr, (std::vector<double>{1.5, -2.0}));
  ASSERT_EQ(r->tensors().size(), 3u);
  // Offsets: aligned, in order, each after the previous tensor's bytes.
  EXPECT_EQ(r->tensors()[0].offset, 0u);
  EXPECT_EQ(r->tensors()[1].offset, 32u);        // 12 bytes -> 32
  EXPECT_EQ(r->tensors()[2].offset, 32u + 96u);  // 70 -> 96
  EXPECT_EQ(r->tensors()[1].ne, (std::vector<int64_t>{7, 5}));  // innermost
  EXPECT_EQ(r->tensors()[2].type, 8u);

  // Values: F32 exact, F16 as torch rounds, Q8_0 within half a step plus
  // the F16 rounding of the scale (|q| <= 127 times d * 2^-11).
  auto a2 = r->ReadTensor(r->tensors()[0]);
  auto b2 = r->ReadTensor(r->tensors()[1]);
  auto c2 = r->ReadTensor(r->tensors()[2]);
  ASSERT_TRUE(a2.ok() && b2.ok() && c2.ok());
  EXPECT_TRUE(torch::equal(*a2, a));
  EXPECT_TRUE(torch::equal(*b2, b.to(torch::kFloat16).to(torch::kFloat32)));
  const torch::Tensor step = c.view({-1, 32}).abs().amax(1, true) / 127;
  EXPECT_TRUE(((*c2 - c).view({-1, 32}).abs() <= step * (0.5 + 127.0 / 2048))
                  .all()
                  .item<bool>());
}

TEST(GgufWriterTest, RefusesWhatLlamaCppCannotLoad) {
  GgufWriter w;
  EXPECT_THAT(
      w.AddTensor(std::string(64, 'x'), torch::ones({2}), GgufTensorType::kF32)
          .message(),
      HasSubstr("63"));
  ASSERT_TRUE(w.AddTensor("t", torch::ones({2}), GgufTensorType::kF32).ok());
  EXPECT_THAT(
      w.AddTensor("t", torch::ones({2}), GgufTensorType::kF32).message(),
      HasSubstr("added twice"));
  EXPECT_THAT(
      w.AddTensor("q", torch::ones({4, 31}), GgufTensorType::kQ8_0).message(),
      HasSubstr("divisible by 32"));
}

// A small valid file to damage.
std::string SmallGguf() {
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  w.SetUint32("llama.block_count", 1);
  EXPECT_TRUE(
      w.AddTensor("t", torch::ones({4, 32}), GgufTensorType::kF32).ok());
  return w.Serialize();
}

TEST(GgufReaderTest, BadInputNamesTheFileTheFieldAndTheValues) {
  const std::string good = SmallGguf();
  auto err = [](const std::string& bytes) {
    auto r = GgufReader::Parse(bytes, "bad.gguf");
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
    EXPECT_THAT(r.status().message(), HasSubstr("bad.gguf"));
    return r.ok() ? std::string() : r.status().message();
  };
  EXPECT_THAT(err("GGU"), HasSubstr("magic"));
  EXPECT_THAT(err("GGML" + good.substr(4)), HasSubstr("not a GGUF file"));
  std::string v = good;
  v[4] = 9;
  EXPECT_THAT(err(v), HasSubstr("version 9, expected 2 or 3"));
  std::string many = good;
  const uint64_t huge = uint64_t{1} << 40;
  std::memcpy(&many[16], &huge, 8);
  EXPECT_THAT(err(many), HasSubstr("metadata count 1099511627776"));
  // Cut inside the tensor data: the tensor is named with its extent.
  EXPECT_THAT(err(good.substr(0, good.size() - 100)),
              HasSubstr("tensor 't' (F32, 128 values, 512 bytes"));
  // A key of the wrong type.
  auto r = GgufReader::Parse(good, "ok.gguf");
  ASSERT_TRUE(r.ok());
  auto s = r->GetString("llama.block_count");
  EXPECT_THAT(s.status().message(),
              HasSubstr("key 'llama.block_count' is uint32, expected string"));
  auto i = r->GetInt("llama.block_count", 2, 10);
  EXPECT_THAT(i.status().message(),
              HasSubstr("expected an integer in [2, 10]"));
  auto m = r->GetFloat("llama.rope.freq_base");
  EXPECT_THAT(m.status().message(), HasSubstr("'llama.rope.freq_base' is "
                                              "missing"));
}

// A tensor of a type ReadTensor cannot read (Q4_K here) is refused before
// its info is used: Parse cannot bound such a tensor's extent, so its dims
// and offset may be anything. (Found by the gguf fuzzer: the offset was
// added to the file's address, an overflow, before the type was checked;
// dims like these made torch::empty throw.)
TEST(GgufReaderTest, UnreadableTypeIsRefusedBeforeItsInfoIsUsed) {
  std::string bytes = SmallGguf();
  // Tensor 't': name length (u64) 1, "t", 2 dims (u32), then the dims
  // (2 x u64), the type (u32) and the offset (u64).
  const std::string name_and_rank("\x01\0\0\0\0\0\0\0t\x02\0\0\0", 13);
  const size_t at = bytes.find(name_and_rank);
  ASSERT_NE(at, std::string::npos);
  char* info = &bytes[at + name_and_rank.size()];
  const uint64_t dims[2] = {uint64_t{1} << 31, uint64_t{1} << 30};
  const uint32_t q4_k = 12;
  const uint64_t offset = ~uint64_t{31};  // aligned, 32 bytes below 2^64
  std::memcpy(info, dims, 16);
  std::memcpy(info + 16, &q4_k, 4);
  std::memcpy(info + 20, &offset, 8);
  auto r = GgufReader::Parse(bytes, "q4k.gguf");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->tensors().size(), 1u);
  EXPECT_EQ(r->tensors()[0].numel(), int64_t{1} << 61);
  auto t = r->ReadTensor(r->tensors()[0]);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kUnimplemented);
  EXPECT_THAT(t.status().message(),
              HasSubstr("q4k.gguf: tensor 't' has ggml type 12"));
}

// A model of `model_type` with GQA (and Qwen's bias or q/k norm) whose
// weights are random: written as F32 GGUF and loaded back it is the same
// model, tensor for tensor, and the q/k rows in the file are in llama.cpp's
// order.
void ExpectRoundTrip(const std::string& model_type) {
  LlamaConfig c;
  c.dim = 64;
  c.hidden_dim = 96;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.vocab_size = 128;
  c.max_seq_len = 64;
  c.model_type = model_type;
  c.qkv_bias = model_type == "qwen2";
  c.qk_norm = model_type == "qwen3";
  if (model_type == "qwen3") c.explicit_head_dim = 32;  // q_dim 128 != dim
  c.tie_embeddings = model_type != "llama";
  c.rope_theta = 500000;
  ASSERT_TRUE(c.Validate().ok()) << c.Validate().ToString();
  auto w = RandomLlamaWeights(c, 7);
  TempDir dir;
  const std::string path = dir.File("m.gguf");
  GgufModelOptions options;
  options.type = GgufTensorType::kF32;
  ASSERT_TRUE(WriteGgufModel(*w, path, options).ok());

  auto back = LoadModel(path);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  const LlamaConfig& b = (*back)->config;
  EXPECT_EQ(b.dim, c.dim);
  EXPECT_EQ(b.n_kv_heads, c.n_kv_heads);
  EXPECT_EQ(b.head_dim(), c.head_dim());
  EXPECT_EQ(b.tie_embeddings, c.tie_embeddings);
  EXPECT_EQ(b.qkv_bias, c.qkv_bias);
  EXPECT_EQ(b.qk_norm, c.qk_norm);
  EXPECT_EQ(b.rope_theta, c.rope_theta);
  for (const auto& [name, shape] : ExpectedTensorShapes(c)) {
    EXPECT_TRUE(torch::equal(w->Materialize(name), (*back)->Materialize(name)))
        << model_type << " " << name;
  }

  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok());
  auto r = GgufReader::Parse((*file)->bytes(), path);
  ASSERT_TRUE(r.ok());
  auto arch = r->GetString("general.architecture");
  ASSERT_TRUE(arch.ok());
  EXPECT_EQ(*arch, model_type);
  auto k = r->ReadTensor(*r->FindTensor("blk.1.attn_k.weight"));
  ASSERT_TRUE(k.ok());
  const torch::Tensor hf_k =
      w->Materialize("model.layers.1.self_attn.k_proj.weight");
  EXPECT_TRUE(torch::equal(
      *k, model_type == "llama" ? PermuteHalvesToInterleaved(hf_k, 2) : hf_k));
}

TEST(GgufExportTest, LlamaRoundTripsWithPermutedQk) {
  ExpectRoundTrip("llama");
}
TEST(GgufExportTest, Qwen2RoundTripsWithBiases) { ExpectRoundTrip("qwen2"); }
TEST(GgufExportTest, Qwen3RoundTripsWithQkNorm) { ExpectRoundTrip("qwen3"); }

TEST(GgufExportTest, ShippedModelGivesTheSameLogitsAndTokens) {
  TempDir dir;
  auto w = test::LoadOrDie(test::kHfDir);
  ASSERT_NE(w, nullptr);
  const torch::Tensor want = test::PromptLogits(w);
  for (GgufTensorType type :
       {GgufTensorType::kF32, GgufTensorType::kF16, GgufTensorType::kQ8_0}) {
    const std::string path =
        dir.File(std::string(GgufTensorTypeName(type)) + ".gguf");
    GgufModelOptions options;
    options.type = type;
    options.tokenizer_path = test::kHfDir + "/tokenizer.model";
    ASSERT_TRUE(WriteGgufModel(*w, path, options).ok());
    auto back = test::LoadOrDie(path);
    ASSERT_NE(back, nullptr);
    const double diff = test::MaxAbsDiff(test::PromptLogits(back), want);
    // F32 is exact; F16 / Q8_0 round the matrices (the logits move ~1e-2).
    if (type == GgufTensorType::kF32) {
      EXPECT_LE(diff, test::kLogitTol);
    } else {
      EXPECT_LT(diff, type == GgufTensorType::kF16 ? 0.05 : 0.5)
          << GgufTensorTypeName(type);
    }
    // The tokenizer inside the file encodes as the tokenizer.model does.
    auto tok = LoadTokenizer(path);
    ASSERT_TRUE(tok.ok()) << tok.status().ToString();
    EXPECT_EQ((*tok)->Encode("Once upon a time", true), test::kPrompt);
    auto found = FindTokenizerForModel(path, 512);
    ASSERT_TRUE(found.ok());
    EXPECT_EQ(*found, path);
  }
}

TEST(GgufExportTest, Qwen3TokenizerJsonBecomesGpt2Keys) {
  const std::string dir =
      std::string(FEDPEFT_SOURCE_DIR) + "/../shared/assets/tokenizers/qwen3";
  if (!PathExists(dir + "/tokenizer.json")) {
    GTEST_SKIP() << "no Qwen3 tokenizer at " << dir;
  }
  LlamaConfig c;
  c.model_type = "qwen3";
  c.qk_norm = true;
  c.dim = 8;
  c.hidden_dim = 8;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 151936;  // Qwen3's embedding rows (> the tokenizer's ids)
  c.tie_embeddings = true;
  c.max_seq_len = 32;
  TempDir tmp;
  GgufModelOptions options;
  options.type = GgufTensorType::kF32;
  options.tokenizer_path = dir + "/tokenizer.json";
  Status s =
      WriteGgufModel(*RandomLlamaWeights(c, 1), tmp.File("q.gguf"), options);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto file = MappedFile::Open(tmp.File("q.gguf"));
  ASSERT_TRUE(file.ok());
  auto r = GgufReader::Parse((*file)->bytes(), "q.gguf");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r->GetString("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(*r->GetString("tokenizer.ggml.pre"), "qwen2");
  auto tokens = r->GetStringArray("tokenizer.ggml.tokens");
  auto types = r->GetNumberArray("tokenizer.ggml.token_type");
  auto merges = r->GetStringArray("tokenizer.ggml.merges");
  ASSERT_TRUE(tokens.ok() && types.ok() && merges.ok());
  ASSERT_EQ(tokens->size(), 151936u);
  EXPECT_EQ((*tokens)[151643], "<|endoftext|>");
  EXPECT_EQ((*types)[151643], 3);  // special: control
  EXPECT_EQ((*types)[100], 1);     // normal
  EXPECT_EQ((*tokens)[151935], "[PAD151935]");
  EXPECT_EQ((*types)[151935], 5);                // unused
  EXPECT_EQ((*merges)[0], "\xC4\xA0 \xC4\xA0");  // "Ġ Ġ"
  auto tok = LoadTokenizer(dir + "/tokenizer.json");
  ASSERT_TRUE(tok.ok());
  EXPECT_EQ(*r->GetInt("tokenizer.ggml.eos_token_id", 0, 1 << 20),
            (*tok)->TokenToId("<|im_end|>"));
  EXPECT_FALSE(*r->GetBool("tokenizer.ggml.add_bos_token"));
  EXPECT_EQ(r->metadata().count("tokenizer.ggml.bos_token_id"), 0u);
}

TEST(GgufExportTest, LoaderRefusesAMismatchedFileNamingTheTensor) {
  TempDir dir;
  GgufWriter w;
  w.SetString("general.architecture", "llama");
  for (const auto& [k, v] : std::vector<std::pair<std::string, uint32_t>>{
           {"llama.embedding_length", 64},
           {"llama.feed_forward_length", 96},
           {"llama.block_count", 1},
           {"llama.attention.head_count", 4},
           {"llama.context_length", 64}}) {
    w.SetUint32(k, v);
  }
  w.SetFloat32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  ASSERT_TRUE(w.AddTensor("token_embd.weight", torch::ones({32, 64}),
                          GgufTensorType::kF32)
                  .ok());
  for (int i = 0; i < 8; ++i) {
    ASSERT_TRUE(w.AddTensor("pad" + std::to_string(i), torch::ones({1}),
                            GgufTensorType::kF32)
                    .ok());
  }
  ASSERT_TRUE(w.AddTensor("blk.0.attn_q.weight", torch::ones({64, 32}),
                          GgufTensorType::kF32)
                  .ok());
  ASSERT_TRUE(w.Write(dir.File("m.gguf")).ok());
  auto r = LoadModel(dir.File("m.gguf"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(r.status().message(), HasSubstr("m.gguf"));
  EXPECT_THAT(r.status().message(),
              HasSubstr("tensor 'blk.0.attn_q.weight' has shape [64, 32], "
                        "expected [64, 64]"));
  EXPECT_THAT(r.status().message(),
              HasSubstr("tensor 'blk.0.attn_norm.weight' is missing"));
  EXPECT_THAT(r.status().message(), HasSubstr("tensor 'pad0' is not part"));
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
