#include "common/heap.h"

#include <cstdlib>
#include <cstring>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace fedpeft {
namespace {

bool EnvironmentSetsAllocator() {
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr &&
      std::strstr(tunables, "glibc.malloc.") != nullptr) {
    return true;
  }
  const char* heap = std::getenv("FEDPEFT_HEAP");
  if (heap != nullptr && std::strcmp(heap, "default") == 0) return true;
  return std::getenv("MALLOC_MMAP_THRESHOLD_") != nullptr ||
         std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr ||
         std::getenv("MALLOC_ARENA_MAX") != nullptr;
}

}  // namespace

bool KeepFreedMemory() {
#ifdef __GLIBC__
  if (EnvironmentSetsAllocator()) return false;
  malloc_trim(0);
  // Both settings also stop glibc adjusting the thresholds dynamically.
  constexpr int kMmapThreshold = 1 << 30;
  constexpr int kNeverTrim = 0x7fffffff;
  const bool mmap_set = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1;
  const bool trim_set = mallopt(M_TRIM_THRESHOLD, kNeverTrim) == 1;
  return mmap_set && trim_set;
#else
  return false;
#endif
}

bool LimitArenas(int arenas) {
#ifdef __GLIBC__
  if (EnvironmentSetsAllocator() || arenas < 1) return false;
  return mallopt(M_ARENA_MAX, arenas) == 1;
#else
  (void)arenas;
  return false;
#endif
}

void ReturnFreedMemory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

}  // namespace fedpeft
