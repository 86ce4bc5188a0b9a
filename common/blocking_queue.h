// An unbounded FIFO that one or more threads push to and a consumer pops
// from, waiting up to a deadline.
//
// Thread-safety: thread-safe.
#ifndef FEDPEFT_COMMON_BLOCKING_QUEUE_H_
#define FEDPEFT_COMMON_BLOCKING_QUEUE_H_

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <utility>

namespace fedpeft {

template <typename T>
class BlockingQueue {
 public:
  void Push(T item) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      items_.push_back(std::move(item));
    }
    ready_.notify_one();
  }

  // The oldest item, or nothing after `timeout` without one.
  std::optional<T> Pop(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!ready_.wait_for(lock, timeout, [this] { return !items_.empty(); })) {
      return std::nullopt;
    }
    T item = std::move(items_.front());
    items_.pop_front();
    return item;
  }

  size_t size() const {
    std::lock_guard<std::mutex> lock(mu_);
    return items_.size();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable ready_;
  std::deque<T> items_;
};

}  // namespace fedpeft

#endif  // FEDPEFT_COMMON_BLOCKING_QUEUE_H_
