// Logging: one macro family with levels and a component tag, over spdlog.
//
//   FP_LOG_INFO("train", "step {} loss {:.4f}", step, loss);
//
// Lines go to stderr (libraries never print to stdout, which belongs to the
// CLI's results) and optionally to a file, as
//   2026-11-22 10:00:00.123 I [train] step 10 loss 2.3012
// Never log key material or tensor data.
//
// Thread-safety: all functions and macros are safe from any thread.
#ifndef FEDPEFT_COMMON_LOGGING_H_
#define FEDPEFT_COMMON_LOGGING_H_

#include <spdlog/spdlog.h>

#include <string>

#include "common/status.h"

namespace fedpeft {

enum class LogLevel { kDebug, kInfo, kWarn, kError, kOff };

// Parses "debug", "info", "warn", "error", "off".
StatusOr<LogLevel> ParseLogLevel(const std::string& name);

// Sets the process-wide level. Default: info (or $FEDPEFT_LOG_LEVEL).
void SetLogLevel(LogLevel level);

// Also appends every line to `path` (created if absent). Call once, early.
Status AddLogFile(const std::string& path);

namespace internal {
spdlog::logger& Logger();
}  // namespace internal

}  // namespace fedpeft

#define FP_LOG_(lvl, component, ...)                                       \
  do {                                                                     \
    auto& _fp_logger = ::fedpeft::internal::Logger();                      \
    if (_fp_logger.should_log(lvl)) {                                      \
      _fp_logger.log(lvl, "[{}] {}", component, fmt::format(__VA_ARGS__)); \
    }                                                                      \
  } while (0)

#define FP_LOG_DEBUG(component, ...) \
  FP_LOG_(spdlog::level::debug, component, __VA_ARGS__)
#define FP_LOG_INFO(component, ...) \
  FP_LOG_(spdlog::level::info, component, __VA_ARGS__)
#define FP_LOG_WARN(component, ...) \
  FP_LOG_(spdlog::level::warn, component, __VA_ARGS__)
#define FP_LOG_ERROR(component, ...) \
  FP_LOG_(spdlog::level::err, component, __VA_ARGS__)

#endif  // FEDPEFT_COMMON_LOGGING_H_
