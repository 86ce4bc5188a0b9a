// Tests of TensorDecoder: every malformed stream it must reject, naming the
// tensor and the values got and expected, its counters, and output_dtype.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "proto/fedpeft.pb.h"
#include "proto/tensor_codec.h"
#include "tests/proto/codec_test_util.h"

namespace fedpeft {
namespace transport {
namespace {

using ::testing::HasSubstr;

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
}  // namespace
}  // namespace transport
}  // namespace fedpeft
