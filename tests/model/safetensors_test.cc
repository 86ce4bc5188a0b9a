#include "model/safetensors.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>

#include "common/file_util.h"

namespace fedpeft {
namespace model {
namespace {

using ::testing::HasSubstr;

// A safetensors file from a literal header and data buffer.
std::string MakeFile(const std::string& header, const std::string& data) {
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(n >> (8 * i)));
  return out + header + data;
}

// Expects a Corruption error naming the source and containing `expected`.
void ExpectRejected(const std::string& bytes, const std::string& expected) {
  auto result = ParseSafetensors(bytes, "test.safetensors");
  ASSERT_FALSE(result.ok())
      << "accepted a file that should fail with '" << expected << "'";
  EXPECT_EQ(result.status().code(), StatusCode::kCorruption)
      << result.status().ToString();
  EXPECT_THAT(result.status().message(), HasSubstr("test.safetensors"));
  EXPECT_THAT(result.status().message(), HasSubstr(expected));
}

TensorMap MixedTensors() {
  torch::manual_seed(7);
  TensorMap t;
  t["a.f32"] = torch::randn({3, 4});
  t["b.f16"] = torch::randn({5}).to(torch::kFloat16);
  t["c.bf16"] = torch::randn({2, 3}).to(torch::kBFloat16);
  t["d.i64"] = torch::arange(-2, 5, torch::kInt64);
  t["e.empty"] = torch::zeros({0, 3});
  return t;
}

TEST(SafetensorsTest, RoundTripAllDtypesAndMetadata) {
  const TensorMap tensors = MixedTensors();
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"note", "quote \" and \\ backslash"}};
  auto bytes = SerializeSafetensors(tensors, metadata);
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();

  // Header as the reference writes it: padded to 8 bytes, compact JSON.
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) {
    header_len = (header_len << 8) | static_cast<unsigned char>((*bytes)[i]);
  }
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ((*bytes)[8], '{');
  EXPECT_THAT(bytes->substr(8, header_len),
              HasSubstr("\"a.f32\":{\"dtype\":\"F32\",\"shape\":[3,4],"
                        "\"data_offsets\":[0,48]}"));

  auto parsed = ParseSafetensors(*bytes, "mem");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->metadata, metadata);
  ASSERT_EQ(parsed->tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    SCOPED_TRACE(name);
    const torch::Tensor& got = parsed->tensors.at(name);
    EXPECT_EQ(got.scalar_type(), t.scalar_type());
    EXPECT_EQ(got.sizes(), t.sizes());
    EXPECT_TRUE(torch::equal(got, t));
  }
  // Byte-exact re-serialization.
  auto again = SerializeSafetensors(parsed->tensors, parsed->metadata);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *bytes);
}

TEST(SafetensorsTest, NonContiguousInputAndFileRoundTrip) {
  TensorMap tensors;
  tensors["t"] = torch::arange(12, torch::kFloat32).view({3, 4}).t();
  tensors["flag"] = torch::tensor({true, false, true});
  tensors["i8"] = torch::tensor({-1, 2, 3}, torch::kInt8);
  const std::string path =
      JoinPath(std::filesystem::temp_directory_path().string(),
               "fedpeft_st_" + std::to_string(::getpid()) + ".safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
  auto read = ReadSafetensors(path);
  std::filesystem::remove(path);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_TRUE(read->metadata.empty());
  for (const auto& [name, t] : tensors) {
    EXPECT_TRUE(torch::equal(read->tensors.at(name), t)) << name;
  }
}

TEST(SafetensorsTest, RejectsFileShorterThanLength) {
  ExpectRejected("abc", "shorter than the 8-byte");
}

TEST(SafetensorsTest, RejectsHeaderBeyondFile) {
  std::string bytes = MakeFile("{}", "");
  bytes[0] = 100;  // claims a 100-byte header in a 10-byte file
  ExpectRejected(bytes, "beyond the end of the file");
}

TEST(SafetensorsTest, RejectsHugeHeaderLengthWithoutAllocating) {
  std::string bytes(16, ' ');
  for (int i = 0; i < 8; ++i) bytes[i] = '\xff';  // 2^64 - 1
  ExpectRejected(bytes, "exceeds the limit");
  bytes[7] = 0;  // 2^56 - 1: still far beyond the limit
  ExpectRejected(bytes, "exceeds the limit");
}

TEST(SafetensorsTest, RejectsHeaderNotJson) {
  ExpectRejected(MakeFile("{\"a\": ", ""), "not valid JSON");
}

TEST(SafetensorsTest, RejectsHeaderNotObject) {
  ExpectRejected(MakeFile("[1, 2]", ""), "expected an object");
}

TEST(SafetensorsTest, RejectsUnknownDtype) {
  ExpectRejected(
      MakeFile(R"({"x":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})",
               std::string(1, '\0')),
      "unknown dtype 'F8_E4M3'");
}

TEST(SafetensorsTest, RejectsNegativeOrFractionalShape) {
  ExpectRejected(
      MakeFile(R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
               std::string(4, '\0')),
      "expected non-negative integers");
  ExpectRejected(
      MakeFile(R"({"x":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
               std::string(4, '\0')),
      "expected non-negative integers");
}

TEST(SafetensorsTest, RejectsOffsetsOutOfBounds) {
  ExpectRejected(
      MakeFile(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
               std::string(4, '\0')),
      "out of bounds");
}

TEST(SafetensorsTest, RejectsSizeMismatch) {
  ExpectRejected(
      MakeFile(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})",
               std::string(4, '\0')),
      "needs 8");
}

TEST(SafetensorsTest, RejectsOverlappingTensors) {
  ExpectRejected(
      MakeFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
               R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
               std::string(6, '\0')),
      "overlaps tensor 'a'");
}

TEST(SafetensorsTest, RejectsGapAndUncoveredBytes) {
  ExpectRejected(
      MakeFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
               R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
               std::string(12, '\0')),
      "gap of uncovered bytes [4, 8)");
  ExpectRejected(
      MakeFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
               std::string(8, '\0')),
      "uncovered trailing bytes");
}

TEST(SafetensorsTest, RejectsBadMetadata) {
  ExpectRejected(MakeFile(R"({"__metadata__":{"k":1}})", ""),
                 "expected a string");
}

// Found with the safetensors fuzz target: error messages used to dump() the
// offending JSON, recursing once per nesting level, so a header nested a
// million deep overflowed the stack.
TEST(SafetensorsTest, RejectsDeeplyNestedValuesWithoutDumpingThem) {
  const int kDepth = 1'000'000;
  const std::string deep = std::string(kDepth, '[') + std::string(kDepth, ']');
  ExpectRejected(MakeFile(R"({"x":{"dtype":"F32","shape":)" + deep +
                              R"(,"data_offsets":[0,0]}})",
                          ""),
                 "has an entry an array of 1 nested entries");
  ExpectRejected(MakeFile(R"({"x":{"dtype":"F32","shape":[],"data_offsets":)" +
                              deep + "}}",
                          ""),
                 "'data_offsets' is an array of 1 nested entries");
  ExpectRejected(MakeFile(R"({"__metadata__":{"k":)" + deep + "}}", ""),
                 "__metadata__ key 'k' is an array of 1 nested entries");
}

TEST(SafetensorsTest, ReadMissingFileIsNotFound) {
  auto result = ReadSafetensors("/nonexistent/model.safetensors");
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(result.status().message(),
              HasSubstr("/nonexistent/model.safetensors"));
}

TEST(SafetensorsTest, FifoOrDirectoryIsRefusedWithoutBlocking) {
  const std::string dir =
      ::testing::TempDir() + "/fedpeft_st_fifo_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string fifo = dir + "/model.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // A writer end, so that even a blocking open returns.
  const int writer = ::open(fifo.c_str(), O_RDWR | O_NONBLOCK);
  ASSERT_GE(writer, 0);
  auto result = ReadSafetensors(fifo);
  ::close(writer);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), StatusCode::kInvalidArgument)
      << result.status().ToString();
  EXPECT_THAT(result.status().message(), HasSubstr(fifo));
  EXPECT_THAT(result.status().message(), HasSubstr("not a regular file"));

  auto on_dir = MappedFile::Open(dir);
  ASSERT_FALSE(on_dir.ok());
  EXPECT_EQ(on_dir.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(on_dir.status().message(), HasSubstr("is a directory"));
  std::filesystem::remove_all(dir);
}

TEST(SafetensorsTest, ShippedModelHasExpectedTensors) {
  const std::string path =
      std::string(FEDPEFT_SOURCE_DIR) + "/assets/stories260K/model.safetensors";
  auto contents = ReadSafetensors(path);
  ASSERT_TRUE(contents.ok()) << contents.status().ToString();
  const TensorMap& t = contents->tensors;
  EXPECT_EQ(t.size(), 2u + 5u * 9u);  // embed, norm, 9 per layer; tied head
  EXPECT_EQ(t.count("lm_head.weight"), 0u);
  const std::map<std::string, std::vector<int64_t>> shapes = {
      {"model.embed_tokens.weight", {512, 64}},
      {"model.norm.weight", {64}},
      {"model.layers.0.input_layernorm.weight", {64}},
      {"model.layers.0.self_attn.q_proj.weight", {64, 64}},
      {"model.layers.3.self_attn.k_proj.weight", {32, 64}},
      {"model.layers.4.self_attn.v_proj.weight", {32, 64}},
      {"model.layers.2.self_attn.o_proj.weight", {64, 64}},
      {"model.layers.1.mlp.gate_proj.weight", {172, 64}},
      {"model.layers.1.mlp.up_proj.weight", {172, 64}},
      {"model.layers.4.mlp.down_proj.weight", {64, 172}},
      {"model.layers.4.post_attention_layernorm.weight", {64}},
  };
  for (const auto& [name, shape] : shapes) {
    ASSERT_EQ(t.count(name), 1u) << name;
    EXPECT_EQ(t.at(name).sizes(), torch::IntArrayRef(shape)) << name;
    EXPECT_EQ(t.at(name).scalar_type(), torch::kFloat32) << name;
  }
  // Real weights, not zeros: RMSNorm gains sit around 1.
  EXPECT_GT(t.at("model.norm.weight").abs().mean().item<float>(), 0.1f);
}

}  // namespace
}  // namespace model
}  // namespace fedpeft
