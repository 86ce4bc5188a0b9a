// ComputeSlots: the bound on in-process workers computing at once.
#include "worker/compute_slots.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace fedpeft {
namespace worker {
namespace {

// Many threads each hold a slot for a while: never more than `slots` hold
// one at the same moment, and every thread gets its turn.
TEST(ComputeSlotsTest, NeverMoreHoldersThanSlots) {
  ComputeSlots slots(3);
  std::atomic<int> inside{0};
  std::atomic<int> most{0};
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 40; ++i) {
    threads.emplace_back([&] {
      ComputeSlots::Lease lease = slots.Acquire();
      const int now = ++inside;
      int seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      --inside;
      lease.Release();
      ++done;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(done.load(), 40);
  EXPECT_LE(most.load(), 3);
  EXPECT_EQ(slots.peak_in_use(), most.load());
  EXPECT_GT(slots.waits(), 0);
  EXPECT_EQ(slots.in_use(), 0);
}

TEST(ComputeSlotsTest, LeaseReleasesOnceWhenMovedOrDestroyed) {
  ComputeSlots slots(1);
  {
    ComputeSlots::Lease a = slots.Acquire();
    EXPECT_TRUE(a.held());
    ComputeSlots::Lease b = std::move(a);
    EXPECT_FALSE(a.held());
    EXPECT_TRUE(b.held());
    EXPECT_EQ(slots.in_use(), 1);
    b.Release();
    b.Release();  // a second Release is a no-op
    EXPECT_EQ(slots.in_use(), 0);
    a = slots.Acquire();  // reusable after a move
    EXPECT_EQ(slots.in_use(), 1);
  }
  EXPECT_EQ(slots.in_use(), 0);
  ComputeSlots at_least_one(0);  // a bound of 0 would deadlock: 1 instead
  EXPECT_EQ(at_least_one.slots(), 1);
}

}  // namespace
}  // namespace worker
}  // namespace fedpeft
