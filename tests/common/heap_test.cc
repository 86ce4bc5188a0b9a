#include "common/heap.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace fedpeft {
namespace {

#ifdef __GLIBC__
// A 64 MiB block is above glibc's largest dynamic mmap threshold (32 MiB),
// so by default it is unmapped when freed; once the heap keeps freed memory
// it stays in the heap for the next allocation.
TEST(HeapTest, FreedLargeBlockStaysInTheHeap) {
  if (std::getenv("GLIBC_TUNABLES") != nullptr ||
      std::getenv("FEDPEFT_HEAP") != nullptr) {
    GTEST_SKIP() << "the environment sets the allocator";
  }
  ASSERT_TRUE(KeepFreedMemory());
  constexpr size_t kBytes = size_t{64} << 20;
  const size_t mapped_before = mallinfo2().hblkhd;
  char* block = static_cast<char*>(std::malloc(kBytes));
  ASSERT_NE(block, nullptr);
  std::memset(block, 1, kBytes);  // fault it in
  EXPECT_EQ(mallinfo2().hblkhd, mapped_before) << "the block was mmapped";
  std::free(block);
  EXPECT_GE(mallinfo2().fordblks, kBytes) << "the freed block left the heap";

  ReturnFreedMemory();
  EXPECT_LT(mallinfo2().fordblks, kBytes) << "malloc_trim kept the block";
}
#endif

TEST(HeapTest, RespectsAnExplicitDefault) {
  setenv("FEDPEFT_HEAP", "default", 1);
  EXPECT_FALSE(KeepFreedMemory());
  unsetenv("FEDPEFT_HEAP");
}

}  // namespace
}  // namespace fedpeft
