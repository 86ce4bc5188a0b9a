// Tests of CODEC_MASKED: secure aggregation's masked words on the wire.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "proto/fedpeft.pb.h"
#include "proto/tensor_codec.h"
#include "tests/proto/codec_test_util.h"

namespace fedpeft {
namespace transport {
namespace {

using ::testing::HasSubstr;

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
}  // namespace
}  // namespace transport
}  // namespace fedpeft
