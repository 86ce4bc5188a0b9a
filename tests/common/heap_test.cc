#include "common/heap.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

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

// Counts the arenas malloc_info reports (<heap nr="i">).
int ArenaCount() {
  char* text = nullptr;
  size_t size = 0;
  FILE* out = open_memstream(&text, &size);
  malloc_info(0, out);
  std::fclose(out);
  int count = 0;
  for (const char* p = text; (p = std::strstr(p, "<heap nr=")) != nullptr;
       ++p) {
    ++count;
  }
  std::free(text);
  return count;
}

// Threads that allocate at once get arenas of their own, up to the limit.
TEST(HeapTest, LimitArenasBoundsTheArenasThreadsGet) {
  if (std::getenv("GLIBC_TUNABLES") != nullptr ||
      std::getenv("MALLOC_ARENA_MAX") != nullptr) {
    GTEST_SKIP() << "the environment sets the allocator";
  }
  ASSERT_EQ(ArenaCount(), 1) << "threads ran before this test";
  ASSERT_TRUE(LimitArenas(2));
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&ready] {
      void* block = std::malloc(1 << 16);
      ++ready;
      while (ready < 8) std::this_thread::yield();  // all hold a block
      std::free(block);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_LE(ArenaCount(), 2);
}
#endif

TEST(HeapTest, RespectsAnExplicitDefault) {
  setenv("FEDPEFT_HEAP", "default", 1);
  EXPECT_FALSE(KeepFreedMemory());
  unsetenv("FEDPEFT_HEAP");
}

}  // namespace
}  // namespace fedpeft
