#include "common/file_util.h"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

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

// A file of `size` bytes that occupies no disk (a hole): caps are tested at
// their real values without writing gigabytes.
void MakeSparseFile(const std::string& path, uint64_t size) {
  { std::ofstream(path, std::ios::binary).put('x'); }
  fs::resize_file(path, size);
}

TEST_F(FileUtilTest, DefaultCapRefusesHugeFileUnread) {
  std::string path = (dir_ / "huge").string();
  MakeSparseFile(path, kDefaultMaxFileBytes + 1);
  auto r = ReadFileToString(path);
  ASSERT_FALSE(r.ok()) << "read " << r.value().size() << " bytes";
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr(path));
  EXPECT_THAT(r.status().message(),
              ::testing::HasSubstr(std::to_string(kDefaultMaxFileBytes + 1)));
  EXPECT_THAT(r.status().message(),
              ::testing::HasSubstr(std::to_string(kDefaultMaxFileBytes)));
}

TEST_F(FileUtilTest, ReadRefusesFifoWithoutBlocking) {
  std::string path = (dir_ / "fifo").string();
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  // No writer: an open without O_NONBLOCK would wait forever.
  auto r = ReadFileToString(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument)
      << r.status().ToString();
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr(path));
  EXPECT_THAT(r.status().message(), ::testing::HasSubstr("not a regular file"));
  EXPECT_EQ(ReadFileToString((dir_ / "absent").string()).status().code(),
            StatusCode::kNotFound);
}

}  // namespace
}  // namespace fedpeft
