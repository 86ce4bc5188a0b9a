// Tests of the tensor stream codec: round trips over every wire dtype and
// chunk size, the quantized codec (unbiasedness, variance bound, bit
// packing), tensors by index, and every malformed stream or encoding the
// decoder must reject.
#include "proto/tensor_codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "proto/fedpeft.pb.h"
#include "tests/proto/tensor_test_util.h"

namespace fedpeft {
namespace transport {
namespace {

using ::testing::HasSubstr;

constexpr size_t kMiB = size_t{1} << 20;

// ---- helpers --------------------------------------------------------------

// Encodes `tensors` into a vector of chunks (tests only: production code
// streams them).
std::vector<proto::TensorChunk> EncodeAll(const TensorMap& tensors,
                                          size_t chunk_bytes) {
  std::vector<proto::TensorChunk> chunks;
  Status s = EncodeTensors(tensors, chunk_bytes,
                           [&chunks](const proto::TensorChunk& c) {
                             chunks.push_back(c);
                             return true;
                           });
  EXPECT_TRUE(s.ok()) << s.ToString();
  return chunks;
}

StatusOr<TensorMap> DecodeAll(const std::vector<proto::TensorChunk>& chunks,
                              DecoderLimits limits = {}) {
  TensorDecoder decoder(std::move(limits));
  for (const proto::TensorChunk& c : chunks) RETURN_IF_ERROR(decoder.Add(c));
  return decoder.Finish();
}

// A small adapter with every wire dtype, odd sizes so chunks split unevenly.
TensorMap SmallAdapter() {
  torch::manual_seed(7);
  TensorMap m;
  m["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] =
      torch::randn({4, 33});
  m["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] =
      torch::randn({33, 4}).to(torch::kHalf);
  m["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"] =
      torch::randn({5, 7}).to(torch::kBFloat16);
  m["scalar"] = torch::tensor(3.5f).reshape({});
  return m;
}

proto::TensorChunk Header(const std::string& name, proto::DType dtype,
                          std::vector<int64_t> shape, uint64_t encoded_bytes) {
  proto::TensorChunk c;
  proto::TensorHeader* h = c.mutable_header();
  h->set_name(name);
  h->set_dtype(dtype);
  for (int64_t d : shape) h->add_shape(d);
  h->set_codec(proto::CODEC_RAW);
  h->set_encoded_bytes(encoded_bytes);
  return c;
}

proto::TensorChunk Data(size_t n) {
  proto::TensorChunk c;
  c.mutable_data()->set_data(std::string(n, '\0'));
  return c;
}

// Feeds `chunks` and returns the first error of Add or Finish (OK if none).
Status Feed(const std::vector<proto::TensorChunk>& chunks,
            DecoderLimits limits = {}) {
  return DecodeAll(chunks, std::move(limits)).status();
}

// ---- codec round trips ----------------------------------------------------

// Secure aggregation's words travel bit-exactly, decode to int32 (never
// converted to output_dtype), and only where the decoder expects them.
TEST(TensorCodecTest, MaskedWordsOnlyWhereExpected) {
  const std::vector<uint32_t> words = {0u,          1u,         0xffffffffu,
                                       0x80000000u, 123456789u, 42u};
  WireTensors wire;
  wire["w"] = EncodeMaskedWords({2, 3}, words.data(), words.size());
  EXPECT_EQ(wire["w"].header.codec(), proto::CODEC_MASKED);
  auto stream = [&](const WireTensors& w) {
    std::vector<proto::TensorChunk> chunks;
    EXPECT_TRUE(WriteTensors(w, 5, nullptr, [&](const proto::TensorChunk& c) {
                  chunks.push_back(c);
                  return true;
                }).ok());
    return chunks;
  };
  DecoderLimits masked;
  masked.masked = true;
  masked.output_dtype = torch::kFloat32;
  auto decoded = DecodeAll(stream(wire), masked);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  const torch::Tensor& t = decoded->at("w");
  ASSERT_EQ(t.scalar_type(), torch::kInt32);
  EXPECT_EQ(t.sizes().vec(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(t.data_ptr(), words.data(), words.size() * 4), 0);

  // Outside a secure-aggregation upload: refused, named.
  Status s = Feed(stream(wire));
  EXPECT_THAT(s.message(), HasSubstr("CODEC_MASKED outside"));
  // Values inside one: refused.
  TensorMap values;
  values["w"] = torch::ones({2, 3});
  s = Feed(EncodeAll(values, 64), masked);
  EXPECT_THAT(s.message(), HasSubstr("expected CODEC_MASKED"));
  // Masked words claim F32 and no quantization parameters.
  WireTensor bad = wire["w"];
  bad.header.set_bits(4);
  EXPECT_THAT(DecodeTensor(bad, "w").status().message(),
              HasSubstr("expected F32 words, 0 and 0"));
  bad = wire["w"];
  bad.header.set_dtype(proto::DTYPE_F16);
  bad.header.set_encoded_bytes(12);
  bad.payload.resize(12);
  EXPECT_THAT(DecodeTensor(bad, "w").status().message(),
              HasSubstr("expected F32 words"));
  // The single-tensor decoder agrees.
  auto one = DecodeTensor(wire["w"], "w");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->scalar_type(), torch::kInt32);
}

TEST(TensorCodecTest, RoundTripEveryDtypeAndChunkSize) {
  const TensorMap tensors = SmallAdapter();
  // 8 bytes: smaller than every tensor; 528: exactly the F32 lora_A (4*33*4)
  // and the F16 lora_B; 1 MiB: larger than all of them.
  for (size_t chunk_bytes : {size_t{1}, size_t{8}, size_t{528}, kMiB}) {
    SCOPED_TRACE("chunk_bytes=" + std::to_string(chunk_bytes));
    std::vector<proto::TensorChunk> chunks = EncodeAll(tensors, chunk_bytes);
    std::vector<std::string> header_order;
    for (const proto::TensorChunk& c : chunks) {
      if (c.has_header()) header_order.push_back(c.header().name());
      if (c.has_data()) {
        EXPECT_LE(c.data().data().size(), chunk_bytes);
        EXPECT_FALSE(c.data().data().empty());
      }
    }
    EXPECT_TRUE(std::is_sorted(header_order.begin(), header_order.end()));
    EXPECT_EQ(header_order.size(), tensors.size());
    StatusOr<TensorMap> got = DecodeAll(chunks);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ExpectSameTensors(*got, tensors);
  }
}

TEST(TensorCodecTest, ChunkEqualToTensorIsOneDataChunk) {
  TensorMap tensors{{"a", torch::randn({4, 33})}};  // 528 bytes
  std::vector<proto::TensorChunk> chunks = EncodeAll(tensors, 528);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].header().encoded_bytes(), 528u);
  EXPECT_EQ(chunks[1].data().data().size(), 528u);
  EXPECT_EQ(EncodeAll(tensors, 527).size(), 3u);  // 527 + 1
}

TEST(TensorCodecTest, HeaderDescribesTensor) {
  TensorMap tensors{{"w", torch::zeros({2, 3, 4}, torch::kBFloat16)}};
  std::vector<proto::TensorChunk> chunks = EncodeAll(tensors, 1000);
  ASSERT_TRUE(chunks[0].has_header());
  const proto::TensorHeader& h = chunks[0].header();
  EXPECT_EQ(h.name(), "w");
  EXPECT_EQ(h.dtype(), proto::DTYPE_BF16);
  EXPECT_THAT(std::vector<int64_t>(h.shape().begin(), h.shape().end()),
              ::testing::ElementsAre(2, 3, 4));
  EXPECT_EQ(h.codec(), proto::CODEC_RAW);
  EXPECT_EQ(h.encoded_bytes(), 48u);
}

TEST(TensorCodecTest, RawBytesAreLittleEndian) {
  TensorMap tensors{{"x", torch::tensor({1.0f})}};
  std::vector<proto::TensorChunk> chunks = EncodeAll(tensors, 64);
  ASSERT_EQ(chunks.size(), 2u);
  // 1.0f = 0x3f800000, little-endian: 00 00 80 3f.
  EXPECT_EQ(chunks[1].data().data(), std::string("\x00\x00\x80\x3f", 4));
}

TEST(TensorCodecTest, EmptyMapIsEmptyStream) {
  EXPECT_TRUE(EncodeAll({}, 16).empty());
  StatusOr<TensorMap> got = DecodeAll({});
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(got->empty());
}

TEST(TensorCodecTest, ZeroElementTensorIsHeaderAlone) {
  TensorMap tensors{{"a", torch::zeros({0, 8})},
                    {"b", torch::ones({3}, torch::kHalf)}};
  std::vector<proto::TensorChunk> chunks = EncodeAll(tensors, 4);
  // a: header; b: header + 2 data chunks (6 bytes in chunks of 4).
  ASSERT_EQ(chunks.size(), 4u);
  EXPECT_TRUE(chunks[0].has_header());
  EXPECT_EQ(chunks[0].header().encoded_bytes(), 0u);
  EXPECT_TRUE(chunks[1].has_header());
  StatusOr<TensorMap> got = DecodeAll(chunks);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameTensors(*got, tensors);
}

TEST(TensorCodecTest, NonContiguousTensorIsSentRowMajor) {
  torch::Tensor t = torch::arange(12, torch::kFloat32).reshape({3, 4}).t();
  ASSERT_FALSE(t.is_contiguous());
  StatusOr<TensorMap> got = DecodeAll(EncodeAll({{"t", t}}, 5));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(torch::equal(got->at("t"), t));
}

TEST(TensorCodecTest, DecodedTensorsOwnTheirMemory) {
  std::vector<proto::TensorChunk> chunks =
      EncodeAll({{"a", torch::ones({16})}}, 8);
  StatusOr<TensorMap> got = DecodeAll(chunks);
  ASSERT_TRUE(got.ok());
  chunks.clear();  // the messages are gone; the tensor is not
  EXPECT_FLOAT_EQ(got->at("a").sum().item<float>(), 16.0f);
}

TEST(TensorCodecTest, EncodeRejectsWhatCannotTravel) {
  auto never = [](const proto::TensorChunk&) -> bool {
    ADD_FAILURE() << "nothing may be written for an invalid map";
    return false;
  };
  Status s =
      EncodeTensors({{"d", torch::zeros({2}, torch::kDouble)}}, 8, never);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'd': dtype Double"));
  s = EncodeTensors({{"", torch::zeros({2})}}, 8, never);
  EXPECT_THAT(s.message(), HasSubstr("empty tensor name"));
  s = EncodeTensors({{"u", torch::Tensor()}}, 8, never);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'u': undefined"));
  s = EncodeTensors({{"a", torch::zeros({2})}}, 0, never);
  EXPECT_THAT(s.message(), HasSubstr("chunk_bytes: must be >= 1, got 0"));
}

TEST(TensorCodecTest, BrokenStreamIsUnavailable) {
  int writes = 0;
  Status s = EncodeTensors({{"a", torch::zeros({100})}}, 64,
                           [&writes](const proto::TensorChunk&) {
                             return ++writes < 3;  // header, 1 chunk, broken
                           });
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_THAT(s.message(), HasSubstr("'a' at byte 64 of 400"));
  EXPECT_EQ(writes, 3);
}

TEST(TensorCodecTest, EncodedBytesAndSpecs) {
  const TensorMap tensors = SmallAdapter();
  EXPECT_EQ(EncodedBytes(tensors), 4u * 33 * 4 + 33 * 4 * 2 + 5 * 7 * 2 + 4);
  std::map<std::string, TensorSpec> specs = SpecsOf(tensors);
  ASSERT_EQ(specs.size(), tensors.size());
  EXPECT_EQ(specs.at("scalar").shape, std::vector<int64_t>{});
  EXPECT_EQ(specs.at("scalar").dtype, torch::kFloat32);
  EXPECT_EQ(ChunkBytesForMessageLimit(4 * kMiB), 4 * kMiB - 1024);
}

TEST(TensorCodecTest, DecodeWithExpectedSpecsAccepts) {
  const TensorMap tensors = SmallAdapter();
  DecoderLimits limits;
  limits.expected = SpecsOf(tensors);
  StatusOr<TensorMap> got = DecodeAll(EncodeAll(tensors, 100), limits);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ExpectSameTensors(*got, tensors);
}

// ---- malformed streams ----------------------------------------------------

TEST(TensorDecoderTest, RejectsDataBeforeHeader) {
  Status s = Feed({Data(4)});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              HasSubstr("tensor chunk 1: 4 data bytes before any tensor "
                        "header"));
}

TEST(TensorDecoderTest, RejectsChunkWithNeitherPart) {
  Status s = Feed({proto::TensorChunk()});
  EXPECT_THAT(s.message(), HasSubstr("neither header nor data"));
}

TEST(TensorDecoderTest, RejectsBadNames) {
  Status s = Feed({Header("", proto::DTYPE_F32, {1}, 4)});
  EXPECT_THAT(s.message(), HasSubstr("tensor header 1: empty tensor name"));
  s = Feed({Header(std::string(257, 'x'), proto::DTYPE_F32, {1}, 4)});
  EXPECT_THAT(s.message(),
              HasSubstr("tensor name of 257 characters (at most 256)"));
  s = Feed({Header("a\nb", proto::DTYPE_F32, {1}, 4)});
  EXPECT_THAT(s.message(), HasSubstr("non-printable byte 0x0a at offset 1"));
  s = Feed({Header("a", proto::DTYPE_F32, {1}, 4), Data(4),
            Header("a", proto::DTYPE_F32, {1}, 4)});
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': sent twice"));
}

TEST(TensorDecoderTest, RejectsUnknownDtypeAndCodec) {
  Status s = Feed({Header("a", proto::DTYPE_UNSPECIFIED, {1}, 4)});
  EXPECT_THAT(s.message(),
              HasSubstr("tensor 'a': dtype 0 (expected F32=1, F16=2 or "
                        "BF16=3)"));
  s = Feed({Header("a", static_cast<proto::DType>(9), {1}, 4)});
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': dtype 9"));
  proto::TensorChunk c = Header("a", proto::DTYPE_F32, {1}, 4);
  c.mutable_header()->set_codec(static_cast<proto::TensorCodec>(3));
  s = Feed({c});
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': codec 3 (expected "
                                     "CODEC_RAW=0"));
}

TEST(TensorDecoderTest, RejectsBadShapes) {
  Status s = Feed({Header("a", proto::DTYPE_F32, {2, -3}, 0)});
  EXPECT_THAT(s.message(),
              HasSubstr("tensor 'a': shape [2, -3] has negative dimension 1"));
  // 2^40 * 2^40 overflows int64 if multiplied blindly.
  const int64_t big = int64_t{1} << 40;
  s = Feed({Header("b", proto::DTYPE_F32, {big, big}, 0)});
  EXPECT_THAT(s.message(),
              HasSubstr("tensor 'b': shape [1099511627776, 1099511627776] has "
                        "more than max_elements_per_tensor"));
  DecoderLimits limits;
  limits.max_elements_per_tensor = 10;
  s = Feed({Header("c", proto::DTYPE_F32, {4, 3}, 48)}, limits);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'c': shape [4, 3] has more than "
                                     "max_elements_per_tensor 10"));
  s = Feed({Header("d", proto::DTYPE_F32, std::vector<int64_t>(9, 1), 4)});
  EXPECT_THAT(s.message(), HasSubstr("tensor 'd': 9 dimensions (at most 8)"));
  // No elements, but LibTorch's strides would overflow (found by the
  // decode_tensor fuzzer): the nonzero dimensions are bounded too.
  s = Feed({Header("e", proto::DTYPE_F32, {0, big, big}, 0)});
  EXPECT_THAT(s.message(),
              HasSubstr("tensor 'e': shape [0, 1099511627776, 1099511627776] "
                        "has more than max_elements_per_tensor"));
}

TEST(TensorDecoderTest, RejectsEncodedBytesNotMatchingShape) {
  Status s = Feed({Header("a", proto::DTYPE_F16, {3, 5}, 60)});
  EXPECT_THAT(s.message(),
              HasSubstr("tensor 'a': encoded_bytes 60 but shape [3, 5] of F16 "
                        "takes 30 bytes raw"));
}

TEST(TensorDecoderTest, RejectsBytesBeyondEncodedBytes) {
  // A chunk that overshoots the open tensor.
  Status s = Feed({Header("a", proto::DTYPE_F32, {2}, 8), Data(6), Data(4)});
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': 10 bytes received, beyond "
                                     "its encoded_bytes 8"));
  // A chunk after the tensor was complete.
  s = Feed({Header("a", proto::DTYPE_F32, {2}, 8), Data(8), Data(1)});
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': 1 bytes beyond its "
                                     "encoded_bytes 8"));
  // Data after a zero-element tensor.
  s = Feed({Header("z", proto::DTYPE_F32, {0}, 0), Data(1)});
  EXPECT_THAT(s.message(), HasSubstr("tensor 'z': 1 bytes beyond its "
                                     "encoded_bytes 0"));
  s = Feed({Header("a", proto::DTYPE_F32, {2}, 8), Data(0)});
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': empty data chunk at byte 0"));
}

TEST(TensorDecoderTest, RejectsTotalOverLimitBeforeAllocating) {
  DecoderLimits limits;
  limits.max_total_bytes = 100;
  Status s = Feed({Header("a", proto::DTYPE_F32, {20}, 80), Data(80),
                   Header("b", proto::DTYPE_F32, {10}, 40)},
                  limits);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'b': 40 bytes would bring the "
                                     "stream to 120 bytes, more than "
                                     "max_total_bytes 100"));
  // A header declaring 1 GiB is refused from the header alone, before any
  // allocation, when the stream may carry 1 MiB.
  limits.max_total_bytes = kMiB;
  const int64_t n = int64_t{1} << 28;  // within max_elements_per_tensor
  s = Feed({Header("big", proto::DTYPE_F32, {n}, uint64_t(n) * 4)}, limits);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'big': 1073741824 bytes would "
                                     "bring the stream to 1073741824 bytes, "
                                     "more than max_total_bytes 1048576"));
}

TEST(TensorDecoderTest, RejectsTooManyTensors) {
  DecoderLimits limits;
  limits.max_tensors = 2;
  Status s = Feed({Header("a", proto::DTYPE_F32, {0}, 0),
                   Header("b", proto::DTYPE_F32, {0}, 0),
                   Header("c", proto::DTYPE_F32, {0}, 0)},
                  limits);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'c': tensor 3 of the stream, "
                                     "more than max_tensors 2"));
}

TEST(TensorDecoderTest, RejectsIncompleteTensor) {
  Status s = Feed({Header("a", proto::DTYPE_F32, {4}, 16), Data(8)});
  EXPECT_THAT(s.message(),
              HasSubstr("tensor 'a': stream ended after 8 of its 16 bytes"));
  s = Feed({Header("a", proto::DTYPE_F32, {4}, 16), Data(8),
            Header("b", proto::DTYPE_F32, {1}, 4)});
  EXPECT_THAT(s.message(), HasSubstr("tensor 'b': header arrived while 'a' "
                                     "had 8 of its 16 bytes"));
}

TEST(TensorDecoderTest, RejectsAgainstExpectedSpecs) {
  DecoderLimits limits;
  limits.expected = std::map<std::string, TensorSpec>{
      {"a", TensorSpec{{2, 3}, torch::kFloat32}},
      {"b", TensorSpec{{4}, std::nullopt}}};
  Status s = Feed({Header("x", proto::DTYPE_F32, {1}, 4)}, limits);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'x': not an expected tensor"));
  s = Feed({Header("a", proto::DTYPE_F32, {3, 2}, 24)}, limits);
  EXPECT_THAT(s.message(),
              HasSubstr("tensor 'a': shape [3, 2], expected [2, 3]"));
  s = Feed({Header("a", proto::DTYPE_F16, {2, 3}, 12)}, limits);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': dtype F16, expected F32"));
  // Any dtype for b; but a never came.
  s = Feed({Header("b", proto::DTYPE_BF16, {4}, 8), Data(8)}, limits);
  EXPECT_THAT(s.message(),
              HasSubstr("1 of 2 expected tensors missing: 'a' (got 1)"));
  limits.require_all_expected = false;
  EXPECT_TRUE(
      Feed({Header("b", proto::DTYPE_BF16, {4}, 8), Data(8)}, limits).ok());
}

TEST(TensorDecoderTest, ErrorIsSticky) {
  TensorDecoder decoder;
  Status first = decoder.Add(Data(1));
  ASSERT_FALSE(first.ok());
  Status again = decoder.Add(Header("a", proto::DTYPE_F32, {0}, 0));
  EXPECT_EQ(again.message(), first.message());
  EXPECT_EQ(decoder.Finish().status().message(), first.message());
}

TEST(TensorDecoderTest, CountsWhatItReceived) {
  TensorDecoder decoder;
  for (const proto::TensorChunk& c : EncodeAll(SmallAdapter(), 100)) {
    ASSERT_TRUE(decoder.Add(c).ok());
  }
  EXPECT_EQ(decoder.tensors_received(), 4u);
  EXPECT_EQ(decoder.bytes_received(), EncodedBytes(SmallAdapter()));
  ASSERT_TRUE(decoder.Finish().ok());
  EXPECT_EQ(decoder.Finish().status().code(), StatusCode::kFailedPrecondition);
}

// ---- quantized codec: helpers ---------------------------------------------

// Packs `levels` LSB-first, `bits` each (tests build payloads by hand).
std::string PackLevels(const std::vector<uint32_t>& levels, int bits) {
  std::string out((levels.size() * bits + 7) / 8, '\0');
  for (size_t i = 0; i < levels.size(); ++i) {
    const size_t bit = i * bits;
    out[bit / 8] = static_cast<char>(static_cast<uint8_t>(out[bit / 8]) |
                                     (levels[i] << (bit % 8)));
  }
  return out;
}

// A CODEC_QUANTIZED tensor built byte by byte: (min, step) per block, then
// the packed levels.
WireTensor QuantizedWire(std::vector<int64_t> shape, int bits,
                         int64_t block_size,
                         const std::vector<std::pair<float, float>>& params,
                         const std::vector<uint32_t>& levels) {
  WireTensor w;
  w.header.set_dtype(proto::DTYPE_F32);
  for (int64_t d : shape) w.header.add_shape(d);
  w.header.set_codec(proto::CODEC_QUANTIZED);
  w.header.set_bits(bits);
  w.header.set_block_size(static_cast<uint32_t>(block_size));
  for (const auto& [min, step] : params) {
    w.payload.append(reinterpret_cast<const char*>(&min), 4);
    w.payload.append(reinterpret_cast<const char*>(&step), 4);
  }
  w.payload += PackLevels(levels, bits);
  w.header.set_encoded_bytes(w.payload.size());
  return w;
}

// Block b's (min, step) from a quantized payload.
std::pair<float, float> BlockParams(const WireTensor& w, int64_t b) {
  float p[2];
  std::memcpy(p, w.payload.data() + 8 * b, 8);
  return {p[0], p[1]};
}

// Level of element i of a quantized payload with `blocks` blocks.
uint32_t LevelAt(const WireTensor& w, int64_t blocks, int64_t i) {
  const int bits = static_cast<int>(w.header.bits());
  const size_t bit = static_cast<size_t>(i) * bits;
  const uint8_t byte = static_cast<uint8_t>(w.payload[8 * blocks + bit / 8]);
  return (byte >> (bit % 8)) & ((1u << bits) - 1);
}

WireTensor MustEncode(const torch::Tensor& t, CodecOptions options,
                      std::mt19937_64* rng) {
  StatusOr<WireTensor> w = EncodeTensor(t, options, rng);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  return w.ok() ? std::move(w).value() : WireTensor{};
}

torch::Tensor MustDecode(const WireTensor& w) {
  StatusOr<torch::Tensor> t = DecodeTensor(w, "t");
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return t.ok() ? *t : torch::Tensor();
}

// The stream of one tensor: its header (named or by index) and its payload
// in chunks of `chunk_bytes`.
std::vector<proto::TensorChunk> WireChunks(const WireTensor& w,
                                           const std::string& name,
                                           size_t chunk_bytes = 1 << 20) {
  std::vector<proto::TensorChunk> chunks(1);
  *chunks[0].mutable_header() = w.header;
  chunks[0].mutable_header()->set_name(name);
  for (size_t off = 0; off < w.payload.size(); off += chunk_bytes) {
    chunks.emplace_back();
    chunks.back().mutable_data()->set_data(w.payload.substr(off, chunk_bytes));
  }
  return chunks;
}

Status DecodeStatus(const WireTensor& w) {
  return DecodeTensor(w, "q").status();
}

// ---- quantized codec: statistics ------------------------------------------

// Encodes x `draws` times and checks, per element, that the mean decoded
// value is within 5 standard errors of x (unbiased) and the empirical
// variance within step^2 / 4 (the bound) and near its exact value
// step^2 * p * (1 - p), p the fractional level.
void CheckStatistics(const torch::Tensor& x, int bits, int64_t block_size,
                     int draws) {
  SCOPED_TRACE("bits=" + std::to_string(bits));
  std::mt19937_64 rng(1234 + bits);
  const CodecOptions options{bits, block_size};
  const int64_t n = x.numel();
  torch::Tensor sum = torch::zeros({n}, torch::kDouble);
  torch::Tensor sum_sq = torch::zeros({n}, torch::kDouble);
  WireTensor first;
  for (int k = 0; k < draws; ++k) {
    WireTensor w = MustEncode(x, options, &rng);
    const torch::Tensor d = MustDecode(w).to(torch::kDouble).reshape({n});
    // Each draw lands on one of the two grid points around x.
    sum += d;
    sum_sq += d * d;
    if (k == 0) first = std::move(w);
  }
  const torch::Tensor xd = x.to(torch::kDouble).reshape({n});
  const torch::Tensor mean = sum / draws;
  const torch::Tensor var = (sum_sq - draws * mean * mean) / (draws - 1);
  const auto xa = xd.accessor<double, 1>();
  const auto ma = mean.accessor<double, 1>();
  const auto va = var.accessor<double, 1>();
  const int64_t blocks = (n + block_size - 1) / block_size;
  int bad_mean = 0, bad_var = 0, bad_var_exact = 0;
  double z_sum = 0;
  int z_count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const auto [min, step] = BlockParams(first, i / block_size);
    ASSERT_LT(i / block_size, blocks);
    const double s = step;
    const double bound = s * s / 4;  // Bernoulli variance p(1-p) s^2 <= s^2/4
    // 5 standard errors of the mean, plus float rounding of the decode.
    const double tol_mean = 5 * std::sqrt(bound / draws) +
                            4e-7 * (std::fabs(xa[i]) + std::fabs(min) + s);
    if (std::fabs(ma[i] - xa[i]) > tol_mean) ++bad_mean;
    // The sample variance of a two-point variable is s^2 p^(1-p^) draws /
    // (draws - 1) <= bound * draws / (draws - 1): 1% covers it.
    if (va[i] > bound * 1.01 + 1e-12) ++bad_var;
    if (s > 0) {
      const double t = (xa[i] - min) / s;
      const double p = t - std::floor(t);
      // The standard error of p^(1-p^) is about |1 - 2p| sqrt(p(1-p)/N).
      const double exact = s * s * p * (1 - p);
      const double tol_var =
          s * s * (5 * std::sqrt(p * (1 - p) / draws) + 3.0 / draws);
      if (std::fabs(va[i] - exact) > tol_var) ++bad_var_exact;
      z_sum += (ma[i] - xa[i]) / std::sqrt(bound / draws);
      ++z_count;
    }
  }
  EXPECT_EQ(bad_mean, 0) << "elements whose mean is off by > 5 std errors";
  EXPECT_EQ(bad_var, 0) << "elements whose variance exceeds step^2/4";
  EXPECT_EQ(bad_var_exact, 0) << "elements whose variance is not p(1-p)s^2";
  // No systematic bias: the mean z-score over all elements (each of
  // variance <= 1, independent) is within 5 / sqrt(count).
  ASSERT_GT(z_count, 0);
  EXPECT_LE(std::fabs(z_sum / z_count), 5.0 / std::sqrt(z_count));
}

TEST(QuantizedCodecTest, UnbiasedWithVarianceWithinBoundForEveryBitWidth) {
  torch::manual_seed(11);
  // 1000 elements in blocks of 64 (the last one 40 long), spread over
  // different ranges per block.
  const torch::Tensor x =
      torch::randn({10, 100}) * torch::linspace(0.01, 3, 10).unsqueeze(1);
  for (int bits : {8, 4, 2}) CheckStatistics(x, bits, 64, 2000);
}

TEST(QuantizedCodecTest, VarianceReachesItsBoundHalfwayBetweenLevels) {
  // min 0, max 15: step 1 at 4 bits; every other value is halfway between
  // two levels, where the variance is exactly step^2 / 4.
  std::vector<float> v = {0.0f, 15.0f};
  for (int q = 0; q < 15; ++q) v.push_back(q + 0.5f);
  const torch::Tensor x = torch::tensor(v);
  std::mt19937_64 rng(5);
  const int draws = 4000;
  torch::Tensor sum = torch::zeros({x.numel()}, torch::kDouble);
  torch::Tensor sum_sq = torch::zeros({x.numel()}, torch::kDouble);
  for (int k = 0; k < draws; ++k) {
    const torch::Tensor d =
        MustDecode(MustEncode(x, {4, 256}, &rng)).to(torch::kDouble);
    sum += d;
    sum_sq += d * d;
  }
  const torch::Tensor mean = sum / draws;
  const torch::Tensor var = (sum_sq - draws * mean * mean) / (draws - 1);
  for (int64_t i = 2; i < x.numel(); ++i) {
    EXPECT_LE(var[i].item<double>(), 0.25 * draws / (draws - 1) + 1e-12);
    EXPECT_GE(var[i].item<double>(), 0.24);  // p^ within 0.45..0.55
    EXPECT_NEAR(mean[i].item<double>(), v[i], 5 * std::sqrt(0.25 / draws));
  }
  EXPECT_EQ(var[0].item<double>(), 0.0);  // the endpoints are exact
  EXPECT_EQ(var[1].item<double>(), 0.0);
}

TEST(QuantizedCodecTest, EveryElementWithinOneStep) {
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({7, 301}) * 5;
  std::mt19937_64 rng(9);
  for (int bits : {8, 4, 2}) {
    for (int64_t block : {int64_t{1}, int64_t{13}, int64_t{256}}) {
      WireTensor w = MustEncode(x, {bits, block}, &rng);
      const torch::Tensor d = MustDecode(w).reshape({-1});
      const torch::Tensor flat = x.reshape({-1});
      for (int64_t i = 0; i < flat.numel(); i += 17) {
        const float step = BlockParams(w, i / block).second;
        EXPECT_LE(std::fabs(d[i].item<float>() - flat[i].item<float>()),
                  step * 1.0001f + 1e-6f)
            << "bits " << bits << " block " << block << " element " << i;
      }
    }
  }
}

// ---- quantized codec: layout and bit packing ------------------------------

TEST(QuantizedCodecTest, PayloadLayoutIsAsDocumented) {
  // 2 bits: levels 0 1 2 3 1 -> 0b11100100 = 0xe4, then 0b01 with zero
  // padding. One block: min 0, step 1.
  std::mt19937_64 rng(1);
  WireTensor w =
      MustEncode(torch::tensor({0.f, 1.f, 2.f, 3.f, 1.f}), {2, 256}, &rng);
  EXPECT_EQ(w.header.codec(), proto::CODEC_QUANTIZED);
  EXPECT_EQ(w.header.dtype(), proto::DTYPE_F32);
  EXPECT_EQ(w.header.bits(), 2u);
  EXPECT_EQ(w.header.block_size(), 256u);
  EXPECT_TRUE(w.header.name().empty());
  EXPECT_EQ(w.header.index(), 0u);
  EXPECT_EQ(w.header.encoded_bytes(), 10u);
  EXPECT_EQ(w.payload, std::string("\x00\x00\x00\x00"  // min 0.0f
                                   "\x00\x00\x80\x3f"  // step 1.0f
                                   "\xe4\x01",
                                   10));
  // 4 bits, blocks of 2: block 0 = {0, 15}: min 0, step 1, levels 0 and 15
  // (0xf0); block 1 = {2}: min 2, step 0, level 0 (0x00).
  w = MustEncode(torch::tensor({0.f, 15.f, 2.f}), {4, 2}, &rng);
  EXPECT_EQ(w.payload, std::string("\x00\x00\x00\x00\x00\x00\x80\x3f"
                                   "\x00\x00\x00\x40\x00\x00\x00\x00"
                                   "\xf0\x00",
                                   18));
}

TEST(QuantizedCodecTest, GridValuesRoundTripExactlyForEveryBitWidth) {
  std::mt19937_64 rng(77);
  std::mt19937 pick(3);
  for (int bits : {2, 4, 8}) {
    const uint32_t max_level = (1u << bits) - 1;
    for (int64_t numel :
         {int64_t{1}, int64_t{37}, int64_t{101}, int64_t{1001}}) {
      for (int64_t block :
           {int64_t{1}, int64_t{3}, int64_t{7}, int64_t{64}, int64_t{1000}}) {
        SCOPED_TRACE("bits=" + std::to_string(bits) + " numel=" +
                     std::to_string(numel) + " block=" + std::to_string(block));
        // Per block: min -1.5 - b, step 0.25 (exact binary fractions), levels
        // random with 0 and max_level present so min and max are the ends.
        std::vector<float> values(numel);
        std::vector<uint32_t> levels(numel);
        for (int64_t i = 0; i < numel; ++i) {
          const int64_t b = i / block;
          const int64_t start = b * block;
          const int64_t end = std::min(numel, start + block);
          uint32_t q = pick() % (max_level + 1);
          if (i == start) q = 0;
          if (i == end - 1 && end - start > 1) q = max_level;
          levels[i] = q;
          values[i] = -1.5f - static_cast<float>(b) + 0.25f * q;
        }
        const torch::Tensor x = torch::tensor(values);
        WireTensor w = MustEncode(x, {bits, block}, &rng);
        const int64_t blocks = (numel + block - 1) / block;
        ASSERT_EQ(w.payload.size(),
                  static_cast<size_t>(8 * blocks + (numel * bits + 7) / 8));
        EXPECT_EQ(w.payload.size(), EncodedPayloadBytes(numel, {bits, block}));
        for (int64_t i = 0; i < numel; ++i) {
          const bool single =
              std::min(numel, (i / block + 1) * block) - (i / block) * block ==
              1;
          // A block of one element has step 0 and level 0.
          ASSERT_EQ(LevelAt(w, blocks, i), single ? 0u : levels[i]) << i;
        }
        EXPECT_TRUE(torch::equal(MustDecode(w), x));
      }
    }
  }
}

TEST(QuantizedCodecTest, RawBitWidthsRoundTrip) {
  torch::manual_seed(5);
  const torch::Tensor x = torch::randn({3, 41});
  std::mt19937_64 rng(1);
  WireTensor w = MustEncode(x, {32, 256}, nullptr);
  EXPECT_EQ(w.header.codec(), proto::CODEC_RAW);
  EXPECT_EQ(w.header.dtype(), proto::DTYPE_F32);
  EXPECT_EQ(w.header.bits(), 0u);
  EXPECT_EQ(w.payload.size(), EncodedPayloadBytes(x.numel(), {32, 256}));
  EXPECT_TRUE(torch::equal(MustDecode(w), x));
  // F16 values survive 16 bits exactly; the result is F16.
  const torch::Tensor h = x.to(torch::kHalf);
  w = MustEncode(h.to(torch::kFloat32), {16, 256}, nullptr);
  EXPECT_EQ(w.header.dtype(), proto::DTYPE_F16);
  EXPECT_EQ(w.payload.size(), EncodedPayloadBytes(x.numel(), {16, 256}));
  EXPECT_TRUE(torch::equal(MustDecode(w), h));
  // F16 and BF16 inputs become F32 at 32 bits, losslessly.
  w = MustEncode(x.to(torch::kBFloat16), {32, 256}, &rng);
  EXPECT_TRUE(
      torch::equal(MustDecode(w), x.to(torch::kBFloat16).to(torch::kFloat)));
}

TEST(QuantizedCodecTest, ConstantAndEmptyTensors) {
  std::mt19937_64 rng(1);
  for (int bits : {2, 4, 8}) {
    const torch::Tensor c = torch::full({5, 7}, -3.25f);
    WireTensor w = MustEncode(c, {bits, 16}, &rng);
    for (int64_t b = 0; b < 3; ++b) {
      EXPECT_EQ(BlockParams(w, b), std::make_pair(-3.25f, 0.0f));
    }
    EXPECT_TRUE(torch::equal(MustDecode(w), c));

    const torch::Tensor e = torch::zeros({0, 8});
    w = MustEncode(e, {bits, 16}, &rng);
    EXPECT_EQ(w.header.encoded_bytes(), 0u);
    EXPECT_TRUE(w.payload.empty());
    const torch::Tensor d = MustDecode(w);
    EXPECT_EQ(d.sizes(), e.sizes());
    EXPECT_EQ(d.scalar_type(), torch::kFloat32);
  }
}

TEST(QuantizedCodecTest, EncodedPayloadBytesMatchesPayload) {
  std::mt19937_64 rng(2);
  for (int bits : {32, 16, 8, 4, 2}) {
    for (int64_t numel : {0, 1, 2, 3, 5, 9, 255, 256, 257, 1000}) {
      for (int64_t block : {1, 3, 64, 256}) {
        WireTensor w = MustEncode(torch::randn({numel}), {bits, block}, &rng);
        EXPECT_EQ(w.payload.size(), EncodedPayloadBytes(numel, {bits, block}))
            << bits << " " << numel << " " << block;
        EXPECT_EQ(w.header.encoded_bytes(), w.payload.size());
      }
    }
  }
  EXPECT_EQ(EncodedPayloadBytes(1000, {4, 256}), 8u * 4 + 500);
  EXPECT_EQ(EncodedPayloadBytes(3, {2, 2}), 8u * 2 + 1);
  EXPECT_EQ(EncodedPayloadBytes(10, {3, 2}), 0u);  // invalid options
  EXPECT_EQ(EncodedPayloadBytes(10, {4, 0}), 0u);
}

TEST(QuantizedCodecTest, ValidateCodecOptions) {
  EXPECT_TRUE(ValidateCodecOptions({4, 256}, "compression").ok());
  EXPECT_TRUE(ValidateCodecOptions({32, kMaxBlockSize}, "c").ok());
  Status s = ValidateCodecOptions({3, 256}, "compression");
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("compression.bits: must be one of 32, "
                                     "16, 8, 4, 2, got 3"));
  s = ValidateCodecOptions({0, 0}, "compression");
  EXPECT_THAT(s.message(), HasSubstr("got 0; compression.block_size: must "
                                     "be in [1, 1048576], got 0"));
  s = ValidateCodecOptions({4, kMaxBlockSize + 1}, "x");
  EXPECT_THAT(s.message(), HasSubstr("x.block_size"));
}

TEST(QuantizedCodecTest, EncodeRejectsNonFiniteAndBadInput) {
  std::mt19937_64 rng(1);
  for (int bits : {32, 16, 8, 4, 2}) {
    torch::Tensor t = torch::ones({10});
    t[3] = std::numeric_limits<float>::quiet_NaN();
    Status s = EncodeTensor(t, {bits, 4}, &rng).status();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("element 3 is nan"));
    t[3] = -std::numeric_limits<float>::infinity();
    s = EncodeTensor(t, {bits, 4}, &rng).status();
    EXPECT_THAT(s.message(), HasSubstr("element 3 is -inf"));
  }
  Status s = EncodeTensor(torch::tensor({1e5f}), {16, 4}, &rng).status();
  EXPECT_THAT(s.message(), HasSubstr("beyond the F16 range"));
  s = EncodeTensor(torch::ones({2}), {4, 4}, nullptr).status();
  EXPECT_THAT(s.message(), HasSubstr("needs a random generator"));
  s = EncodeTensor(torch::ones({2}, torch::kInt), {4, 4}, &rng).status();
  EXPECT_THAT(s.message(), HasSubstr("dtype Int cannot be encoded"));
  s = EncodeTensor(torch::ones({2}), {5, 4}, &rng).status();
  EXPECT_THAT(s.message(), HasSubstr("compression.bits"));
  // A range F32 cannot span with min + 255 x step.
  s = EncodeTensor(torch::tensor({-3e38f, 3e38f}), {8, 4}, &rng).status();
  EXPECT_THAT(s.message(), HasSubstr("block 0 spans"));

  // Through EncodeTensors: named, and nothing written.
  torch::Tensor bad = torch::zeros({4});
  bad[2] = std::numeric_limits<float>::infinity();
  auto never = [](const proto::TensorChunk&) -> bool {
    ADD_FAILURE() << "nothing may be written for an invalid map";
    return false;
  };
  s = EncodeTensors({{"a", torch::zeros({3})}, {"w", bad}}, 8, never, {4, 2},
                    &rng);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'w': element 2 is inf"));
  s = EncodeTensors({{"a", torch::zeros({3})}}, 8, never, {4, 2}, nullptr);
  EXPECT_THAT(s.message(), HasSubstr("needs a random generator"));
  s = EncodeTensors({{"a", torch::zeros({3})}}, 8, never, {4, 0}, &rng);
  EXPECT_THAT(s.message(), HasSubstr("compression.block_size"));
}

// ---- quantized codec: bad encodings ---------------------------------------

TEST(QuantizedDecodeTest, AcceptsHandBuiltPayload) {
  WireTensor w =
      QuantizedWire({5}, 2, 3, {{1.0f, 0.5f}, {-2.0f, 0.0f}}, {0, 3, 2, 1, 3});
  StatusOr<torch::Tensor> t = DecodeTensor(w, "q");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_TRUE(
      torch::equal(*t, torch::tensor({1.0f, 2.5f, 2.0f, -2.0f, -2.0f})));
}

TEST(QuantizedDecodeTest, RejectsWrongPayloadLength) {
  WireTensor w =
      QuantizedWire({5}, 2, 3, {{1.0f, 0.5f}, {-2.0f, 0.0f}}, {0, 3, 2, 1, 3});
  w.header.set_encoded_bytes(19);
  Status s = DecodeStatus(w);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              HasSubstr("tensor 'q': encoded_bytes 19 but shape [5] quantized "
                        "to 2 bits in blocks of 3 takes 18 bytes"));
  w.header.set_encoded_bytes(18);
  w.payload.pop_back();
  s = DecodeStatus(w);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'q': payload of 17 bytes, "
                                     "expected its encoded_bytes 18"));
  // A shape whose quantized size overflows uint64.
  w.header.clear_shape();
  w.header.add_shape(int64_t{1} << 62);
  w.header.add_shape(1);
  w.header.set_block_size(1);
  s = DecodeStatus(w);
  EXPECT_THAT(s.message(), HasSubstr("takes more than 2^64 bytes quantized"));
}

TEST(QuantizedDecodeTest, RejectsBadBlockParameters) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    float min, step;
    std::string want;
  };
  const std::vector<Case> cases = {
      {nan, 1.0f, "block 1 of 2 has min nan (expected a finite F32)"},
      {-inf, 1.0f, "block 1 of 2 has min -inf"},
      {0.0f, nan, "block 1 of 2 has step nan (expected a finite F32 >= 0)"},
      {0.0f, -1.0f, "block 1 of 2 has step -1 (expected a finite F32 >= 0)"},
      {0.0f, inf, "block 1 of 2 has step inf"},
      {3e38f, 1e37f,
       "block 1 of 2 has min 3.00000001e+38 + 255 x step 9.99999993e+36 "
       "overflowing F32 (expected every level to decode to a finite value)"},
      // 255 x step alone overflows.
      {-3e38f, 3e36f,
       "block 1 of 2 has min -3.00000001e+38 + 255 x step 3.00000004e+36 "
       "overflowing F32"},
  };
  for (const Case& c : cases) {
    WireTensor w =
        QuantizedWire({4}, 8, 2, {{0.0f, 1.0f}, {c.min, c.step}}, {1, 2, 3, 4});
    Status s = DecodeStatus(w);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("tensor 'q': " + c.want));
  }
  // At the edge: min + 255 x step just finite is fine.
  WireTensor w = QuantizedWire({2}, 8, 2, {{-3e38f, 1.3e36f}}, {0, 255});
  EXPECT_TRUE(DecodeStatus(w).ok()) << DecodeStatus(w).ToString();
}

TEST(QuantizedDecodeTest, RejectsBadBitsAndBlockSize) {
  WireTensor good = QuantizedWire({4}, 4, 4, {{0.0f, 1.0f}}, {1, 2, 3, 4});
  for (uint32_t bits : {0u, 1u, 3u, 16u, 32u}) {
    WireTensor w = good;
    w.header.set_bits(bits);
    EXPECT_THAT(DecodeStatus(w).message(),
                HasSubstr("tensor 'q': bits " + std::to_string(bits) +
                          " with CODEC_QUANTIZED (expected 2, 4 or 8)"));
  }
  WireTensor w = good;
  w.header.set_block_size(0);
  EXPECT_THAT(DecodeStatus(w).message(),
              HasSubstr("tensor 'q': block_size 0 with CODEC_QUANTIZED "
                        "(expected 1 to 1048576)"));
  w.header.set_block_size(kMaxBlockSize + 1);
  EXPECT_THAT(DecodeStatus(w).message(), HasSubstr("block_size 1048577"));
  // bits / block_size on a raw tensor.
  WireTensor raw;
  raw.header.set_dtype(proto::DTYPE_F32);
  raw.header.add_shape(2);
  raw.header.set_encoded_bytes(8);
  raw.payload.assign(8, '\0');
  ASSERT_TRUE(DecodeStatus(raw).ok());
  raw.header.set_bits(8);
  EXPECT_THAT(DecodeStatus(raw).message(),
              HasSubstr("tensor 'q': bits 8 and block_size 0 with CODEC_RAW "
                        "(expected 0 and 0"));
  raw.header.set_bits(0);
  raw.header.set_block_size(64);
  EXPECT_THAT(DecodeStatus(raw).message(), HasSubstr("block_size 64 with "
                                                     "CODEC_RAW"));
  raw.header.set_block_size(0);
  raw.header.set_codec(static_cast<proto::TensorCodec>(3));
  EXPECT_THAT(DecodeStatus(raw).message(),
              HasSubstr("tensor 'q': codec 3 (expected CODEC_RAW=0, "
                        "CODEC_QUANTIZED=1 or CODEC_MASKED=2"));
}

TEST(QuantizedDecodeTest, RejectsNonzeroPaddingBits) {
  // 3 elements of 2 bits: 6 bits used, bits 6 and 7 of the byte are padding.
  WireTensor w = QuantizedWire({3}, 2, 8, {{0.0f, 1.0f}}, {1, 2, 3});
  ASSERT_TRUE(DecodeStatus(w).ok());
  w.payload.back() = static_cast<char>(w.payload.back() | 0x40);
  Status s = DecodeStatus(w);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'q': last byte 0x79 has nonzero "
                                     "padding bits above bit 6"));
  // 4 bits, odd count: the high nibble of the last byte.
  w = QuantizedWire({1}, 4, 8, {{0.0f, 1.0f}}, {5});
  w.payload.back() = static_cast<char>(0x15);
  EXPECT_THAT(DecodeStatus(w).message(), HasSubstr("above bit 4"));
  // Through a TensorDecoder: rejected when the last byte arrives.
  Status d = Feed(WireChunks(w, "p", 4));
  EXPECT_THAT(d.message(), HasSubstr("tensor 'p': last byte 0x15"));
}

TEST(QuantizedDecodeTest, QuantizedDecodesToF32WhateverItsDtype) {
  WireTensor w = QuantizedWire({2}, 8, 2, {{0.0f, 0.5f}}, {1, 3});
  w.header.set_dtype(proto::DTYPE_BF16);
  StatusOr<torch::Tensor> t = DecodeTensor(w, "q");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::equal(*t, torch::tensor({0.5f, 1.5f})));
  w.header.set_dtype(proto::DTYPE_UNSPECIFIED);
  EXPECT_THAT(DecodeStatus(w).message(), HasSubstr("dtype 0"));
}

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

std::vector<proto::TensorChunk> EncodeWith(const TensorMap& tensors,
                                           size_t chunk_bytes,
                                           CodecOptions options, uint64_t seed,
                                           const Schema* schema) {
  std::vector<proto::TensorChunk> chunks;
  std::mt19937_64 rng(seed);
  Status s = EncodeTensors(
      tensors, chunk_bytes,
      [&chunks](const proto::TensorChunk& c) {
        chunks.push_back(c);
        return true;
      },
      options, &rng, schema);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return chunks;
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

// ---- output_dtype ---------------------------------------------------------

TEST(OutputDtypeTest, ConvertsEveryDecodedTensor) {
  TensorMap tensors = SmallAdapter();  // F32, F16, BF16 and a scalar
  for (torch::Dtype out : {torch::kFloat32, torch::kFloat16}) {
    DecoderLimits limits;
    limits.output_dtype = out;
    StatusOr<TensorMap> got = DecodeAll(EncodeAll(tensors, 7), limits);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    for (const auto& [name, t] : tensors) {
      EXPECT_EQ(got->at(name).scalar_type(), out) << name;
      EXPECT_TRUE(torch::equal(got->at(name), t.to(out))) << name;
    }
  }
  // Quantized tensors convert too.
  DecoderLimits limits;
  limits.output_dtype = torch::kBFloat16;
  StatusOr<TensorMap> got =
      DecodeAll(EncodeWith(tensors, 9, {4, 8}, 3, nullptr), limits);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  for (const auto& [name, t] : *got) {
    EXPECT_EQ(t.scalar_type(), torch::kBFloat16) << name;
  }
}

TEST(OutputDtypeTest, ExpectedDtypesAreCheckedAgainstIt) {
  const TensorMap tensors{{"h", torch::ones({3}, torch::kHalf)}};
  DecoderLimits limits;
  limits.expected = std::map<std::string, TensorSpec>{
      {"h", TensorSpec{{3}, torch::kFloat32}}};
  // F16 on the wire, F32 expected: refused without conversion ...
  EXPECT_THAT(Feed(EncodeAll(tensors, 64), limits).message(),
              HasSubstr("tensor 'h': dtype F16, expected F32"));
  // ... accepted with output_dtype F32.
  limits.output_dtype = torch::kFloat32;
  StatusOr<TensorMap> got = DecodeAll(EncodeAll(tensors, 64), limits);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->at("h").scalar_type(), torch::kFloat32);
  // An expected dtype output_dtype contradicts.
  limits.output_dtype = torch::kBFloat16;
  EXPECT_THAT(Feed(EncodeAll(tensors, 64), limits).message(),
              HasSubstr("tensor 'h': decodes to output_dtype BF16, expected "
                        "F32"));
  // Quantized decodes to F32: an F16 spec needs output_dtype.
  limits.output_dtype.reset();
  limits.expected->at("h").dtype = torch::kFloat16;
  EXPECT_THAT(
      Feed(EncodeWith(tensors, 64, {8, 4}, 1, nullptr), limits).message(),
      HasSubstr("tensor 'h': CODEC_QUANTIZED decodes to F32, expected F16 "
                "(set output_dtype to convert)"));
  limits.output_dtype = torch::kFloat16;
  EXPECT_TRUE(Feed(EncodeWith(tensors, 64, {8, 4}, 1, nullptr), limits).ok());
}

TEST(QuantizedStreamTest, LimitsApplyToEncodedBytes) {
  // 1000 elements at 4 bits in blocks of 100: 80 + 500 bytes.
  std::mt19937_64 rng(1);
  WireTensor w = MustEncode(torch::randn({1000}), {4, 100}, &rng);
  ASSERT_EQ(w.payload.size(), 580u);
  DecoderLimits limits;
  limits.max_total_bytes = 579;
  EXPECT_THAT(Feed(WireChunks(w, "w"), limits).message(),
              HasSubstr("tensor 'w': 580 bytes would bring the stream to 580 "
                        "bytes, more than max_total_bytes 579"));
  limits.max_total_bytes = 580;
  EXPECT_TRUE(Feed(WireChunks(w, "w", 13), limits).ok());
  // Incomplete quantized tensor.
  std::vector<proto::TensorChunk> chunks = WireChunks(w, "w", 100);
  chunks.pop_back();
  EXPECT_THAT(Feed(chunks).message(),
              HasSubstr("tensor 'w': stream ended after 500 of its 580 "
                        "bytes"));
}

TEST(QuantizedStreamTest, WriteTensorsChecksWhatItSends) {
  std::mt19937_64 rng(1);
  WireTensors wires;
  wires["a"] = MustEncode(torch::randn({10}), {2, 4}, &rng);
  wires["b"] = MustEncode(torch::randn({3}), {16, 4}, &rng);
  std::vector<proto::TensorChunk> chunks;
  auto collect = [&chunks](const proto::TensorChunk& c) {
    chunks.push_back(c);
    return true;
  };
  ASSERT_TRUE(WriteTensors(wires, 5, nullptr, collect).ok());
  StatusOr<TensorMap> got = DecodeAll(chunks);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(torch::equal(got->at("a"), MustDecode(wires["a"])));
  EXPECT_TRUE(torch::equal(got->at("b"), MustDecode(wires["b"])));

  chunks.clear();
  wires["a"].payload.pop_back();
  Status s = WriteTensors(wires, 5, nullptr, collect);
  EXPECT_THAT(s.message(), HasSubstr("tensor 'a': payload of"));
  EXPECT_TRUE(chunks.empty());
  s = WriteTensors(wires, 0, nullptr, collect);
  EXPECT_THAT(s.message(), HasSubstr("chunk_bytes: must be >= 1"));
}
}  // namespace
}  // namespace transport
}  // namespace fedpeft
