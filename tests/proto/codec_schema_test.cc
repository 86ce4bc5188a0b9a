// Tests of tensors by index: Schema's sorting and fingerprint, streams whose
// headers carry indices (quantized and raw), names outside the schema, and
// every bad index the decoder must reject.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "proto/fedpeft.pb.h"
#include "proto/tensor_codec.h"
#include "tests/proto/codec_test_util.h"
#include "tests/proto/tensor_test_util.h"

namespace fedpeft {
namespace transport {
namespace {

using ::testing::HasSubstr;

// ---- schema and tensors by index ------------------------------------------

TEST(SchemaTest, SortsDedupsAndFingerprints) {
  Schema s = Schema::Of({"b", "a", "b"});
  EXPECT_EQ(s.names, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(s.fingerprint, 0xe5beb1190415e670ull);  // FNV-1a 64 of "a\nb"
  EXPECT_EQ(Schema::Of({}).fingerprint, 0xcbf29ce484222325ull);
  std::map<std::string, int> m{{"b", 1}, {"a", 2}};
  EXPECT_EQ(Schema::OfKeys(m).fingerprint, s.fingerprint);
  EXPECT_NE(Schema::Of({"a", "c"}).fingerprint, s.fingerprint);
}

// An adapter with odd sizes for the quantized stream tests.
TensorMap OddAdapter() {
  torch::manual_seed(21);
  TensorMap m;
  const std::string p = "base_model.model.model.layers.0.";
  m[p + "self_attn.q_proj.lora_A.weight"] = torch::randn({8, 37});
  m[p + "self_attn.q_proj.lora_B.weight"] = torch::randn({37, 8}) * 0.01;
  m[p + "self_attn.v_proj.lora_A.weight"] =
      torch::randn({3, 5}).to(torch::kHalf);
  m[p + "mlp.down_proj.lora_B.weight"] = torch::full({7, 3}, 0.125f);
  m[p + "mlp.up_proj.lora_A.weight"] = torch::zeros({0, 4});
  m["scalar"] = torch::tensor(2.5f).reshape({});
  return m;
}

TEST(SchemaTest, QuantizedStreamByIndexRoundTripsInSmallChunks) {
  const TensorMap tensors = OddAdapter();
  const Schema schema = Schema::OfKeys(tensors);
  for (int bits : {8, 4, 2}) {
    const CodecOptions options{bits, 16};
    // What the receiver must see: each tensor encoded in name order from the
    // same generator, decoded by DecodeTensor.
    std::mt19937_64 rng(99);
    TensorMap want;
    for (const auto& [name, t] : tensors) {
      want[name] = MustDecode(MustEncode(t, options, &rng));
    }
    // 3 and 7 split the 8-byte block parameters and the packed levels.
    for (size_t chunk_bytes : {size_t{1}, size_t{3}, size_t{7}, size_t{64}}) {
      SCOPED_TRACE("bits=" + std::to_string(bits) +
                   " chunk_bytes=" + std::to_string(chunk_bytes));
      std::vector<proto::TensorChunk> chunks =
          EncodeWith(tensors, chunk_bytes, options, 99, &schema);
      size_t headers = 0;
      for (const proto::TensorChunk& c : chunks) {
        if (c.has_data()) {
          EXPECT_LE(c.data().data().size(), chunk_bytes);
          continue;
        }
        const proto::TensorHeader& h = c.header();
        EXPECT_TRUE(h.name().empty());
        EXPECT_EQ(h.index(), headers + 1);  // name order = index order
        EXPECT_EQ(h.schema(), headers == 0 ? schema.fingerprint : 0u);
        EXPECT_EQ(h.codec(), proto::CODEC_QUANTIZED);
        ++headers;
      }
      EXPECT_EQ(headers, tensors.size());
      // The receiver holds an F32 adapter (v_proj's lora_A is F16 here).
      DecoderLimits limits;
      limits.expected = SpecsOf(tensors);
      for (auto& [name, spec] : *limits.expected) spec.dtype = torch::kFloat32;
      StatusOr<TensorMap> got = DecodeAll(chunks, limits);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      ExpectSameTensors(*got, want);
    }
  }
}

TEST(SchemaTest, RawStreamByIndexKeepsDtypes) {
  const TensorMap tensors = SmallAdapter();
  const Schema schema = Schema::OfKeys(tensors);
  std::vector<proto::TensorChunk> chunks =
      EncodeWith(tensors, 5, {}, 1, &schema);
  EXPECT_EQ(chunks[0].header().schema(), schema.fingerprint);
  EXPECT_EQ(chunks[0].header().index(), 1u);
  DecoderLimits limits;
  limits.expected = SpecsOf(tensors);
  StatusOr<TensorMap> got = DecodeAll(chunks, limits);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameTensors(*got, tensors);
}

TEST(SchemaTest, NamesOutsideTheSchemaTravelByName) {
  TensorMap tensors{{"a", torch::ones({2})}, {"z", torch::ones({3})}};
  const Schema schema = Schema::Of({"a", "b"});
  std::vector<proto::TensorChunk> chunks =
      EncodeWith(tensors, 64, {8, 4}, 1, &schema);
  ASSERT_EQ(chunks.size(), 4u);
  EXPECT_EQ(chunks[0].header().index(), 1u);
  EXPECT_EQ(chunks[0].header().schema(), schema.fingerprint);
  EXPECT_EQ(chunks[2].header().name(), "z");
  EXPECT_EQ(chunks[2].header().index(), 0u);
  // A subset of the decoder's expected tensors, by index.
  DecoderLimits limits;
  limits.expected =
      std::map<std::string, TensorSpec>{{"a", TensorSpec{{2}, torch::kFloat32}},
                                        {"b", TensorSpec{{1}, std::nullopt}},
                                        {"z", TensorSpec{{3}, std::nullopt}}};
  limits.require_all_expected = false;
  // Its expected names differ from the schema: the index is refused.
  Status s = Feed(chunks, limits);
  EXPECT_THAT(s.message(), HasSubstr("tensor index 1 but the stream's schema "
                                     "fingerprint"));
  limits.expected->erase("z");
  s = Feed(chunks, limits);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'z': not an expected tensor"));
  // Without expected tensors, a stream of names only decodes.
  TensorMap only_z{{"z", torch::ones({3})}};
  StatusOr<TensorMap> got =
      DecodeAll(EncodeWith(only_z, 64, {8, 4}, 1, &schema));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(torch::equal(got->at("z"), torch::ones({3})));
}

// A header by index (name unset) for a stream whose expected tensors are
// {"a": [2], "b": [1]}, F32.
proto::TensorChunk IndexHeader(uint32_t index, int64_t numel, uint64_t schema) {
  proto::TensorChunk c = Header("", proto::DTYPE_F32, {numel}, numel * 4);
  c.mutable_header()->set_index(index);
  c.mutable_header()->set_schema(schema);
  return c;
}

DecoderLimits AbLimits() {
  DecoderLimits limits;
  limits.expected = std::map<std::string, TensorSpec>{
      {"a", TensorSpec{{2}, torch::kFloat32}},
      {"b", TensorSpec{{1}, torch::kFloat32}}};
  return limits;
}

TEST(SchemaTest, DecoderResolvesIndices) {
  const uint64_t fp = Schema::Of({"a", "b"}).fingerprint;
  StatusOr<TensorMap> got =
      DecodeAll({IndexHeader(2, 1, fp), Data(4), IndexHeader(1, 2, 0), Data(8)},
                AbLimits());
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->at("a").numel(), 2);
  EXPECT_EQ(got->at("b").numel(), 1);
  // Index 0 means "by name"; by name and by index mix.
  got = DecodeAll({IndexHeader(2, 1, fp), Data(4),
                   Header("a", proto::DTYPE_F32, {2}, 8), Data(8)},
                  AbLimits());
  ASSERT_TRUE(got.ok()) << got.status().ToString();
}

TEST(SchemaTest, DecoderRejectsBadIndices) {
  const uint64_t fp = Schema::Of({"a", "b"}).fingerprint;
  // No expected tensors to index.
  Status s = Feed({IndexHeader(1, 2, fp)});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor header 1: tensor index 1 but "
                                     "this decoder has no expected tensors"));
  // Out of range.
  s = Feed({IndexHeader(3, 2, fp)}, AbLimits());
  EXPECT_THAT(s.message(), HasSubstr("tensor header 1: tensor index 3 out of "
                                     "range (expected 1 to 2"));
  // A different adapter on the other end, or no fingerprint at all.
  s = Feed({IndexHeader(1, 2, fp + 1)}, AbLimits());
  EXPECT_THAT(s.message(),
              HasSubstr("tensor index 1 but the stream's schema fingerprint " +
                        std::string("0x") +
                        "e5beb1190415e671 differs from "
                        "ours 0xe5beb1190415e670 (the two ends hold "
                        "different adapters)"));
  s = Feed(
      {Header("b", proto::DTYPE_F32, {1}, 4), Data(4), IndexHeader(1, 2, 0)},
      AbLimits());
  EXPECT_THAT(s.message(), HasSubstr("fingerprint 0x0000000000000000 differs"));
  // The fingerprint only on the first header.
  s = Feed({IndexHeader(1, 2, fp), Data(8), IndexHeader(2, 1, fp)}, AbLimits());
  EXPECT_THAT(s.message(), HasSubstr("tensor header 2: schema fingerprint "
                                     "0xe5beb1190415e670 (expected it on the "
                                     "stream's first header only)"));
  // Name and index both.
  proto::TensorChunk both = IndexHeader(1, 2, fp);
  both.mutable_header()->set_name("a");
  s = Feed({both}, AbLimits());
  EXPECT_THAT(s.message(), HasSubstr("tensor header 1: both name 'a' and "
                                     "index 1 set (expected one of them)"));
  // The same tensor by index and by name.
  s = Feed(
      {IndexHeader(1, 2, fp), Data(8), Header("a", proto::DTYPE_F32, {2}, 8)},
      AbLimits());
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': sent twice"));
  // Index resolves to a name whose spec the header must match.
  s = Feed({IndexHeader(2, 2, fp)}, AbLimits());
  EXPECT_THAT(s.message(), HasSubstr("tensor 'b': shape [2], expected [1]"));
}
}  // namespace
}  // namespace transport
}  // namespace fedpeft
