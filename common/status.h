// Status and StatusOr<T>: the one way fedpeft reports expected failures
// (I/O, bad config, bad model file, bad network message).
//
// A Status is either OK or carries a code and a message. Messages name the
// subject (file, key, field), the value got, the value expected, and a hint
// where one helps. Exceptions from LibTorch, yaml-cpp and Boost are caught at
// the nearest wrapper and turned into a Status; none crosses a thread, an RPC
// handler or main().
//
// Thread-safety: values; safe to copy between threads.
#ifndef FEDPEFT_COMMON_STATUS_H_
#define FEDPEFT_COMMON_STATUS_H_

#include <cassert>
#include <optional>
#include <string>
#include <utility>

namespace fedpeft {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad input: config, file content, message field
  kNotFound,         // a file, key or tensor that should exist does not
  kIoError,          // the OS failed a read/write
  kCorruption,       // a file or message violates its format
  kUnimplemented,    // a valid input this build does not support
  kFailedPrecondition,
  kUnavailable,  // a peer cannot be reached; safe to retry
  kDeadlineExceeded,
  kInternal,
};

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string msg) {
    return Status(StatusCode::kInvalidArgument, std::move(msg));
  }
  static Status NotFound(std::string msg) {
    return Status(StatusCode::kNotFound, std::move(msg));
  }
  static Status IoError(std::string msg) {
    return Status(StatusCode::kIoError, std::move(msg));
  }
  static Status Corruption(std::string msg) {
    return Status(StatusCode::kCorruption, std::move(msg));
  }
  static Status Unimplemented(std::string msg) {
    return Status(StatusCode::kUnimplemented, std::move(msg));
  }
  static Status FailedPrecondition(std::string msg) {
    return Status(StatusCode::kFailedPrecondition, std::move(msg));
  }
  static Status Unavailable(std::string msg) {
    return Status(StatusCode::kUnavailable, std::move(msg));
  }
  static Status DeadlineExceeded(std::string msg) {
    return Status(StatusCode::kDeadlineExceeded, std::move(msg));
  }
  static Status Internal(std::string msg) {
    return Status(StatusCode::kInternal, std::move(msg));
  }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "OK" or "<Code name>: <message>".
  std::string ToString() const;

  // Returns a copy whose message is "<prefix>: <message>"; OK stays OK.
  Status WithContext(const std::string& prefix) const;

 private:
  Status(StatusCode code, std::string msg)
      : code_(code), message_(std::move(msg)) {}

  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

const char* StatusCodeName(StatusCode code);

// Either a value of T or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  // REQUIRES: !status.ok()
  StatusOr(Status status) : status_(std::move(status)) {  // NOLINT
    assert(!status_.ok());
    if (status_.ok()) status_ = Status::Internal("StatusOr built from OK");
  }
  StatusOr(T value) : value_(std::move(value)) {}  // NOLINT

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  // REQUIRES: ok()
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace fedpeft

#define FEDPEFT_CONCAT_INNER_(a, b) a##b
#define FEDPEFT_CONCAT_(a, b) FEDPEFT_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (a Status) is not OK.
#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    ::fedpeft::Status _fp_status = (expr);   \
    if (!_fp_status.ok()) return _fp_status; \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, FuncReturningStatusOr())`.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(FEDPEFT_CONCAT_(_fp_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

#endif  // FEDPEFT_COMMON_STATUS_H_
