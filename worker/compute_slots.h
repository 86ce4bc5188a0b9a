// A bound on how many in-process workers compute at once.
//
// `simulate` in thread mode runs one thread per worker, all sharing one base
// model. Without a bound, a few hundred threads call into BLAS at the same
// moment; Debian's OpenBLAS is built for a fixed number of concurrent
// callers and crashes beyond it (SIGSEGV in sgemm after "OpenBLAS warning:
// precompiled NUM_THREADS exceeded", seen at 128 workers). Workers that hold
// a ComputeSlots lease while they train, evaluate and encode keep the number
// of threads inside LibTorch at `slots`, whatever the number of workers;
// the others wait their turn (or do network I/O).
//
// Thread-safety: all methods may be called from any thread.
#ifndef FEDPEFT_WORKER_COMPUTE_SLOTS_H_
#define FEDPEFT_WORKER_COMPUTE_SLOTS_H_

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace fedpeft {
namespace worker {

class ComputeSlots {
 public:
  // `slots` >= 1.
  explicit ComputeSlots(int slots);
  ComputeSlots(const ComputeSlots&) = delete;
  ComputeSlots& operator=(const ComputeSlots&) = delete;

  // Holds one slot until destroyed (or Release()d). Movable.
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& other) noexcept : owner_(other.owner_) {
      other.owner_ = nullptr;
    }
    Lease& operator=(Lease&& other) noexcept;
    ~Lease() { Release(); }
    void Release();
    bool held() const { return owner_ != nullptr; }

   private:
    friend class ComputeSlots;
    explicit Lease(ComputeSlots* owner) : owner_(owner) {}
    ComputeSlots* owner_ = nullptr;
  };

  // Blocks until a slot is free.
  Lease Acquire();

  int slots() const { return slots_; }
  // Leases held now, and the most ever held at once (for tests and logs).
  int in_use() const;
  int peak_in_use() const;
  // How many Acquire() calls had to wait.
  int64_t waits() const;

 private:
  void Return();

  const int slots_;
  mutable std::mutex mu_;
  std::condition_variable free_;
  int in_use_ = 0;
  int peak_ = 0;
  int64_t waits_ = 0;
};

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_COMPUTE_SLOTS_H_
