#include "common/file_util.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

namespace fedpeft {
namespace {

namespace fs = std::filesystem;

class FileUtilTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("fedpeft_fu_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    ASSERT_TRUE(EnsureDirectory(dir_.string()).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(FileUtilTest, AtomicWriteReplacesWholeFileAndLeavesNoTemp) {
  std::string path = (dir_ / "ckpt.bin").string();
  ASSERT_TRUE(WriteFileAtomic(path, std::string(1 << 20, 'a')).ok());
  ASSERT_TRUE(WriteFileAtomic(path, "short").ok());
  auto read = ReadFileToString(path);
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, "short");
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST_F(FileUtilTest, AtomicWriteIntoMissingDirectoryFailsWithPath) {
  std::string path = (dir_ / "no" / "such" / "f").string();
  Status s = WriteFileAtomic(path, "x");
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), ::testing::HasSubstr("no/such"));
}

TEST_F(FileUtilTest, ReadRespectsLimitAndNamesFile) {
  std::string path = (dir_ / "big").string();
  ASSERT_TRUE(WriteFileAtomic(path, std::string(100, 'x')).ok());
  auto r = ReadFileToString(path, 10);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr(path));
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr("limit"));
  EXPECT_EQ(ReadFileToString(dir_.string()).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedpeft
