#include "worker/compute_slots.h"

#include <algorithm>

namespace fedpeft {
namespace worker {

ComputeSlots::ComputeSlots(int slots) : slots_(std::max(1, slots)) {}

ComputeSlots::Lease& ComputeSlots::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    owner_ = other.owner_;
    other.owner_ = nullptr;
  }
  return *this;
}

void ComputeSlots::Lease::Release() {
  if (owner_ != nullptr) {
    owner_->Return();
    owner_ = nullptr;
  }
}

ComputeSlots::Lease ComputeSlots::Acquire() {
  std::unique_lock<std::mutex> lock(mu_);
  if (in_use_ >= slots_) {
    ++waits_;
    free_.wait(lock, [this] { return in_use_ < slots_; });
  }
  ++in_use_;
  peak_ = std::max(peak_, in_use_);
  return Lease(this);
}

void ComputeSlots::Return() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --in_use_;
  }
  free_.notify_one();
}

int ComputeSlots::in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}

int ComputeSlots::peak_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}

int64_t ComputeSlots::waits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waits_;
}

}  // namespace worker
}  // namespace fedpeft
