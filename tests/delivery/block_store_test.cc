// The block store: blocks checked on the way in and out, a corrupt block
// found, deleted and reported so that it is fetched again.
#include "delivery/block_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "delivery/model_manifest.h"
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

TEST_F(DeliveryTest, BlockStoreRoundTripsCheckedBlocks) {
  BlockStore store(Path("blocks"));
  ASSERT_TRUE(store.Open().ok());
  const std::string data(70000, 'q');
  const std::string hash = Sha256Hex(data);
  EXPECT_FALSE(store.Has(hash));
  StatusOr<std::string> none = store.Get(hash);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(store.Put(hash, data).ok());
  EXPECT_TRUE(store.Has(hash));
  EXPECT_EQ(store.PathOf(hash),
            Path("blocks") + "/" + hash.substr(0, 2) + "/" + hash);
  StatusOr<std::string> got = store.Get(hash);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, data);
  // No stray temp files beside the block.
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(Path("blocks"))) {
    files += e.is_regular_file();
  }
  EXPECT_EQ(files, 1);
}

TEST_F(DeliveryTest, BlockStoreRefusesBytesThatDoNotMatchTheName) {
  BlockStore store(Path("blocks"));
  ASSERT_TRUE(store.Open().ok());
  const std::string hash = Sha256Hex("right");
  Status s = store.Put(hash, "wrong");
  EXPECT_EQ(s.code(), StatusCode::kCorruption) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr(hash));
  EXPECT_FALSE(store.Has(hash));
}

TEST_F(DeliveryTest, BlockStoreDetectsAndDeletesACorruptBlock) {
  BlockStore store(Path("blocks"));
  ASSERT_TRUE(store.Open().ok());
  const std::string data(5000, 'z');
  const std::string hash = Sha256Hex(data);
  ASSERT_TRUE(store.Put(hash, data).ok());
  std::string damaged = ReadAll(store.PathOf(hash));
  damaged[1234] ^= 1;
  WriteAll(store.PathOf(hash), damaged);
  StatusOr<std::string> got = store.Get(hash);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), StatusCode::kCorruption);
  EXPECT_THAT(got.status().message(), HasSubstr("corrupt"));
  EXPECT_EQ(store.corrupt_found(), 1);
  EXPECT_FALSE(store.Has(hash));  // deleted: the next fetch replaces it
  ASSERT_TRUE(store.Put(hash, data).ok());
  EXPECT_TRUE(store.Get(hash).ok());
  // A block larger than any block may be is corrupt as well.
  WriteAll(store.PathOf(hash), std::string(kMaxBlockSize + 1, 'z'));
  got = store.Get(hash);
  EXPECT_EQ(got.status().code(), StatusCode::kCorruption);
  EXPECT_EQ(store.corrupt_found(), 2);
}

}  // namespace
}  // namespace delivery
}  // namespace fedpeft
