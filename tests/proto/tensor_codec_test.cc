// Tests of the tensor stream codec: round trips over every wire dtype and
// chunk size, and every malformed stream the decoder must reject.
#include "proto/tensor_codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>
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

}  // namespace
}  // namespace transport
}  // namespace fedpeft
