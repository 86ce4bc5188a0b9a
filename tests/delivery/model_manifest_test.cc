// The manifest of a model as content-addressed blocks: block names against
// an independent SHA-256 (OpenSSL's incremental EVP interface, and the
// FIPS 180-2 vectors), and the validation every manifest from the network
// goes through.
#include "delivery/model_manifest.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>

#include "delivery/sha256.h"
#include "tests/delivery/delivery_fixture.h"

namespace fedpeft {
namespace delivery {
namespace {

using delivery_test::DeliveryTest;
using delivery_test::ReadAll;
using delivery_test::WriteAll;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

// SHA-256 of `data` by a route of its own: EVP_DigestUpdate in 1000-byte
// pieces, hex by printf.
std::string ReferenceSha256(const std::string& data) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  for (size_t i = 0; i < data.size(); i += 1000) {
    EVP_DigestUpdate(ctx, data.data() + i,
                     std::min<size_t>(1000, data.size() - i));
  }
  unsigned char md[32];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  std::string hex;
  char buf[3];
  for (unsigned int i = 0; i < len; ++i) {
    snprintf(buf, sizeof buf, "%02x", md[i]);
    hex += buf;
  }
  return hex;
}

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(
      Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_TRUE(IsSha256Hex(Sha256Hex("x")));
  EXPECT_FALSE(IsSha256Hex("ABC"));
  EXPECT_FALSE(IsSha256Hex(std::string(64, 'g')));
  EXPECT_FALSE(IsSha256Hex(std::string(63, 'a')));
}

TEST_F(DeliveryTest, ManifestOfTheShippedModelNamesEveryBlockBySha256) {
  const uint64_t bs = 64 << 10;
  StatusOr<ModelManifest> m = BuildManifest(kModel, bs);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  EXPECT_EQ(m->block_size, bs);
  EXPECT_EQ(m->entry, "");  // a folder
  std::vector<std::string> paths;
  for (const ManifestFile& f : m->files) paths.push_back(f.path);
  EXPECT_THAT(paths, ::testing::ElementsAre("config.json", "model.safetensors",
                                            "tokenizer.model",
                                            "tokenizer_config.json"));
  uint64_t total = 0;
  for (const ManifestFile& f : m->files) {
    const std::string bytes = ReadAll(fs::path(kModel) / f.path);
    ASSERT_EQ(f.size, bytes.size()) << f.path;
    total += bytes.size();
    ASSERT_EQ(f.blocks.size(), (bytes.size() + bs - 1) / bs) << f.path;
    for (size_t b = 0; b < f.blocks.size(); ++b) {
      const std::string chunk = bytes.substr(b * bs, bs);
      EXPECT_EQ(m->BlockLength(f, b), chunk.size());
      EXPECT_EQ(f.blocks[b], ReferenceSha256(chunk))
          << f.path << " block " << b;
    }
  }
  EXPECT_EQ(m->total_bytes(), total);
  EXPECT_GT(m->total_blocks(), 16u);  // many blocks at 64 KiB
  EXPECT_EQ(m->id, ReferenceSha256(CanonicalText(*m)));
  EXPECT_TRUE(ValidateManifest(*m, "test").ok());
  // The same bytes, the same manifest; another block size, another one.
  StatusOr<ModelManifest> again = BuildManifest(kModel, bs);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id, m->id);
  StatusOr<ModelManifest> other = BuildManifest(kModel, 4 << 20);
  ASSERT_TRUE(other.ok());
  EXPECT_NE(other->id, m->id);
  EXPECT_EQ(other->total_blocks(), 4u);  // one block a file
}

TEST_F(DeliveryTest, ASingleFileModelIsItsOwnEntry) {
  const std::string bin =
      kSource + "/assets/stories260K-llama2c/stories260K.bin";
  StatusOr<ModelManifest> m = BuildManifest(bin, 64 << 10);
  ASSERT_TRUE(m.ok()) << m.status().ToString();
  ASSERT_EQ(m->files.size(), 1u);
  EXPECT_EQ(m->files[0].path, "stories260K.bin");
  EXPECT_EQ(m->entry, "stories260K.bin");
  EXPECT_EQ(m->files[0].size, fs::file_size(bin));
}

TEST_F(DeliveryTest, TwoFineTunesOfOneBaseShareTheBaseBlocks) {
  const std::string a = CopyModel("a");
  const std::string b = CopyModel("b");
  WriteAll(fs::path(b) / "tokenizer_config.json",
           ReadAll(fs::path(b) / "tokenizer_config.json") + "\n");
  StatusOr<ModelManifest> ma = BuildManifest(a, 64 << 10);
  StatusOr<ModelManifest> mb = BuildManifest(b, 64 << 10);
  ASSERT_TRUE(ma.ok() && mb.ok());
  EXPECT_NE(ma->id, mb->id);
  EXPECT_EQ(ma->files[1].path, "model.safetensors");
  EXPECT_EQ(ma->files[1].blocks, mb->files[1].blocks);
  EXPECT_NE(ma->files[3].blocks, mb->files[3].blocks);
}

TEST(ManifestPathTest, OnlyRelativePathsOfPlainComponents) {
  EXPECT_TRUE(ValidateRelativePath("model.safetensors", "p").ok());
  EXPECT_TRUE(ValidateRelativePath("sub/dir/tokenizer.json", "p").ok());
  EXPECT_TRUE(ValidateRelativePath("a..b", "p").ok());
  for (const std::string& bad : std::vector<std::string>{
           "", "../x", "/abs", "a/../b", "a/./b", ".", "..", "a//b", "a/",
           "a\\b", std::string("a\nb"), std::string(600, 'x')}) {
    Status s = ValidateRelativePath(bad, "files[2].path");
    EXPECT_FALSE(s.ok()) << "'" << bad << "'";
    EXPECT_THAT(s.message(), HasSubstr("files[2].path")) << bad;
  }
  EXPECT_THAT(ValidateRelativePath("../x", "f").message(),
              HasSubstr("'..' component"));
  EXPECT_THAT(ValidateRelativePath("/abs", "f").message(),
              HasSubstr("is absolute"));
  EXPECT_THAT(ValidateRelativePath("", "f").message(), HasSubstr("is empty"));
}

// A small valid manifest, its id set.
ModelManifest Small() {
  ModelManifest m;
  m.block_size = 4096;
  ManifestFile f;
  f.path = "config.json";
  f.size = 5000;  // two blocks
  f.blocks = {Sha256Hex("a"), Sha256Hex("b")};
  m.files.push_back(f);
  f.path = "model.safetensors";
  f.size = 10;
  f.blocks = {Sha256Hex("c")};
  m.files.push_back(f);
  m.id = ManifestId(m);
  return m;
}

// The error ValidateManifest gives `m` after `edit` (id recomputed unless
// the edit is to the id).
std::string ErrorAfter(const std::function<void(ModelManifest&)>& edit,
                       bool keep_id = false) {
  ModelManifest m = Small();
  edit(m);
  if (!keep_id) m.id = ManifestId(m);
  Status s = ValidateManifest(m, "the server's model manifest");
  return s.ok() ? "OK" : s.message();
}

TEST(ManifestValidationTest, EveryBadFieldIsNamed) {
  EXPECT_EQ(ErrorAfter([](ModelManifest&) {}), "OK");
  EXPECT_THAT(
      ErrorAfter([](ModelManifest& m) { m.files[0].path = "../etc/x"; }),
      HasSubstr("files[0].path"));
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.files[1].path = "/abs"; }),
              HasSubstr("files[1].path"));
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.files[1].path = ""; }),
              HasSubstr("files[1].path"));
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.files[1].path = "a"; }),
              HasSubstr("sorted and unique"));
  EXPECT_THAT(
      ErrorAfter([](ModelManifest& m) { m.files[1].path = "config.json/x"; }),
      HasSubstr("inside the file"));
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.files[0].size = 9000; }),
              HasSubstr("files[0].blocks: 2 blocks for 9000 bytes"));
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.files[0].blocks[1] = "zz"; }),
              HasSubstr("files[0].blocks[1]"));
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.block_size = 100; }),
              HasSubstr("block_size"));
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.block_size = 1ull << 30; }),
              HasSubstr("block_size"));
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.files.clear(); }),
              HasSubstr("files: expected 1 to"));
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.entry = "other.bin"; }),
              HasSubstr("entry"));
  EXPECT_THAT(
      ErrorAfter([](ModelManifest& m) { m.files[1].size = 1ull << 50; }),
      HasSubstr("files[1].size"));
  // Content that does not match its id.
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.files[1].size = 11; },
                         /*keep_id=*/true),
              HasSubstr("manifest_id"));
  EXPECT_THAT(ErrorAfter([](ModelManifest& m) { m.id = "x"; }, true),
              HasSubstr("manifest_id"));
}

TEST(ManifestValidationTest, BuildRejectsABlockSizeOutOfBounds) {
  StatusOr<ModelManifest> m = BuildManifest(kModel, 100);
  ASSERT_FALSE(m.ok());
  EXPECT_THAT(m.status().message(), HasSubstr("model.block_size"));
  EXPECT_FALSE(BuildManifest(kModel + "/none", 4096).ok());
}

}  // namespace
}  // namespace delivery
}  // namespace fedpeft
