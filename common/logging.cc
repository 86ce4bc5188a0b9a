#include "common/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <cstdlib>
#include <memory>
#include <mutex>

namespace fedpeft {
namespace {

spdlog::level::level_enum ToSpd(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return spdlog::level::debug;
    case LogLevel::kInfo:
      return spdlog::level::info;
    case LogLevel::kWarn:
      return spdlog::level::warn;
    case LogLevel::kError:
      return spdlog::level::err;
    case LogLevel::kOff:
      return spdlog::level::off;
  }
  return spdlog::level::info;
}

std::shared_ptr<spdlog::logger> MakeLogger() {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>("fedpeft", sink);
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %L %v");
  logger->set_level(spdlog::level::info);
  logger->flush_on(spdlog::level::info);
  if (const char* env = std::getenv("FEDPEFT_LOG_LEVEL")) {
    auto parsed = ParseLogLevel(env);
    if (parsed.ok()) logger->set_level(ToSpd(*parsed));
  }
  return logger;
}

}  // namespace

StatusOr<LogLevel> ParseLogLevel(const std::string& name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "warn" || name == "warning") return LogLevel::kWarn;
  if (name == "error") return LogLevel::kError;
  if (name == "off") return LogLevel::kOff;
  return Status::InvalidArgument("log level: got '" + name +
                                 "', expected one of debug, info, warn, "
                                 "error, off");
}

void SetLogLevel(LogLevel level) { internal::Logger().set_level(ToSpd(level)); }

Status AddLogFile(const std::string& path) {
  try {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path);
    sink->set_pattern("%Y-%m-%d %H:%M:%S.%e %L %v");
    internal::Logger().sinks().push_back(sink);
  } catch (const spdlog::spdlog_ex& e) {
    return Status::IoError("log file '" + path + "': " + e.what());
  }
  return Status::Ok();
}

namespace internal {
spdlog::logger& Logger() {
  static std::shared_ptr<spdlog::logger> logger = MakeLogger();
  return *logger;
}
}  // namespace internal

}  // namespace fedpeft
