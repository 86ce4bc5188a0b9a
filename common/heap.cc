#include "common/heap.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace fedpeft {
namespace {

// Whether the user chose the allocator's behaviour: FEDPEFT_HEAP=default,
// a glibc malloc tunable, or one of the MALLOC_*_ variables given.
bool UserSetsAllocator(std::initializer_list<const char*> variables) {
  const char* heap = std::getenv("FEDPEFT_HEAP");
  if (heap != nullptr && std::strcmp(heap, "default") == 0) return true;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr &&
      std::strstr(tunables, "glibc.malloc.") != nullptr) {
    return true;
  }
  for (const char* v : variables) {
    if (std::getenv(v) != nullptr) return true;
  }
  return false;
}

std::atomic<bool> kept{false};  // KeepFreedMemory took effect

}  // namespace

bool KeepFreedMemory() {
#ifdef __GLIBC__
  if (UserSetsAllocator({"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"})) {
    return false;
  }
  malloc_trim(0);
  // Both settings also stop glibc adjusting the thresholds dynamically.
  constexpr int kMmapThreshold = 1 << 30;
  constexpr int kNeverTrim = 0x7fffffff;
  const bool mmap_set = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1;
  const bool trim_set = mallopt(M_TRIM_THRESHOLD, kNeverTrim) == 1;
  kept = mmap_set && trim_set;
  return kept;
#else
  return false;
#endif
}

bool LimitArenas(int arenas) {
#ifdef __GLIBC__
  if (arenas < 1 || UserSetsAllocator({"MALLOC_ARENA_MAX"})) return false;
  return mallopt(M_ARENA_MAX, arenas) == 1;
#else
  (void)arenas;
  return false;
#endif
}

void ReturnFreedMemory() {
#ifdef __GLIBC__
  if (kept) malloc_trim(0);
#endif
}

}  // namespace fedpeft
