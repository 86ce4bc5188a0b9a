// Tests of raw tensor streams (EncodeTensors then TensorDecoder): round trips
// over every wire dtype and chunk size, the headers and bytes on the wire,
// what cannot be encoded, and a broken stream.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <map>
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
}  // namespace
}  // namespace transport
}  // namespace fedpeft
