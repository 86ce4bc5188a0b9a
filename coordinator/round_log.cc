#include "coordinator/round_log.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/logging.h"

namespace fedpeft {
namespace coordinator {
namespace {

// Up to this many uploads a round line lists them per participant; beyond,
// it summarizes them, so a line stays small with 1,000 users a round.
constexpr size_t kListedUploads = 32;

// {"count", "min", "median", "max", "total"} of the bytes of each upload.
nlohmann::json UploadSummary(const std::map<std::string, uint64_t>& bytes) {
  std::vector<uint64_t> v;
  uint64_t total = 0;
  for (const auto& [id, b] : bytes) {
    v.push_back(b);
    total += b;
  }
  std::sort(v.begin(), v.end());
  return {{"count", v.size()},
          {"min", v.front()},
          {"median", v[v.size() / 2]},
          {"max", v.back()},
          {"total", total}};
}

nlohmann::json NumberOrNull(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

// How far from its end the metrics file is read on open and resume: a
// line is a few KiB at most (kListedUploads), so this spans many rounds.
constexpr uint64_t kTailBytes = 1 << 20;

// The last `n` bytes of `path` (all of it if shorter) and its size.
StatusOr<std::string> ReadTail(const std::string& path, uint64_t n,
                               uint64_t* size) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) {
    return Status::IoError("logging.metrics_file: cannot read '" + path + "'");
  }
  *size = static_cast<uint64_t>(in.tellg());
  const uint64_t from = *size > n ? *size - n : 0;
  std::string tail(*size - from, '\0');
  in.seekg(static_cast<std::streamoff>(from));
  in.read(tail.data(), static_cast<std::streamsize>(tail.size()));
  if (!in) {
    return Status::IoError("logging.metrics_file: cannot read '" + path + "'");
  }
  return tail;
}

// A process killed mid-write leaves a last line without its newline;
// appending after it would glue the next line to it. Cut it off.
Status DropTornLine(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return Status::Ok();
  uint64_t size = 0;
  ASSIGN_OR_RETURN(std::string tail, ReadTail(path, kTailBytes, &size));
  if (tail.empty() || tail.back() == '\n') return Status::Ok();
  const size_t newline = tail.rfind('\n');
  if (newline == std::string::npos && size > tail.size()) {
    return Status::InvalidArgument(
        "logging.metrics_file '" + path +
        "': its last line is over 1 MiB and has no newline: not a metrics "
        "file? (move it away or name another)");
  }
  const uint64_t keep =
      newline == std::string::npos ? 0 : size - tail.size() + newline + 1;
  std::filesystem::resize_file(path, keep, ec);
  if (ec) {
    return Status::IoError(
        "logging.metrics_file: cannot cut the torn last "
        "line of '" +
        path + "': " + ec.message());
  }
  FP_LOG_WARN("coordinator",
              "logging.metrics_file '{}': dropped a torn last line ({} bytes, "
              "left by a process stopped mid-write)",
              path, size - keep);
  return Status::Ok();
}

}  // namespace

std::string FormatBytes(uint64_t b) {
  char buf[32];
  if (b >= (1ull << 20)) {
    std::snprintf(buf, sizeof(buf), "%.2f MiB", b / 1048576.0);
  } else if (b >= 1024) {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", b / 1024.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%llu B",
                  static_cast<unsigned long long>(b));
  }
  return buf;
}

StatusOr<std::unique_ptr<RoundLog>> RoundLog::Open(RoundLogOptions options) {
  std::unique_ptr<RoundLog> log(new RoundLog(std::move(options)));
  const std::string& path = log->options_.metrics_file;
  if (path.empty()) return log;
  const std::string parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    RETURN_IF_ERROR(
        EnsureDirectory(parent).WithContext("logging.metrics_file"));
  }
  RETURN_IF_ERROR(DropTornLine(path));
  log->metrics_.open(path, std::ios::app);
  if (!log->metrics_) {
    return Status::IoError("logging.metrics_file: cannot open '" + path +
                           "' for appending");
  }
  return log;
}

void RoundLog::Write(const RoundMetrics& m, const std::string& metrics_line) {
  std::string eval = std::isfinite(m.eval_loss)
                         ? fmt::format("{:.4f}", m.eval_loss)
                         : std::string("n/a");
  if (std::isfinite(m.server_eval_loss)) {
    eval += fmt::format(" (server {:.4f})", m.server_eval_loss);
  }
  std::string shape;
  if (m.edges_answered > 0) shape += fmt::format(" edges {}", m.edges_answered);
  if (options_.ranks && m.rank_max > 0) {
    shape += fmt::format(" | rank {}..{} (mean {:.1f})", m.rank_min, m.rank_max,
                         m.rank_mean);
  }
  if (options_.frozen) {
    shape += fmt::format(" | frozen {:.0f}%", 100 * m.frozen_fraction);
  }
  if (m.secagg_workers >= 0) {
    shape += fmt::format(" | secure sum of {}", m.secagg_workers);
  }
  if (std::isfinite(m.epsilon)) {
    shape += fmt::format(
        " | epsilon {:.3f}, against the cloud {} (delta {:.2g}, q {:.3g}, z "
        "{:.3f}, C {:.4g})",
        m.epsilon,
        std::isfinite(m.epsilon_cloud) ? fmt::format("{:.3f}", m.epsilon_cloud)
                                       : std::string("unbounded"),
        m.delta, m.sampling_rate, m.noise_multiplier, m.clip_norm);
  } else if (m.clip_norm > 0) {
    shape +=
        fmt::format(" | dp C {:.4g} z {:.3f}", m.clip_norm, m.noise_multiplier);
  }
  FP_LOG_INFO(
      "coordinator",
      "{} {} {}: selected {} answered {} dropped {}{} | train "
      "loss {} eval loss {} | up {} down {} | {:.1f}s",
      options_.label,
      options_.total_rounds > 0 ? std::to_string(m.round) + "/" +
                                      std::to_string(options_.total_rounds)
                                : std::to_string(m.round),
      m.aggregated ? "done" : "skipped", m.selected, m.answered, m.dropped,
      shape,
      std::isfinite(m.train_loss) ? fmt::format("{:.4f}", m.train_loss)
                                  : std::string("n/a"),
      eval, FormatBytes(m.bytes_up), FormatBytes(m.bytes_down), m.seconds);
  if (!metrics_.is_open()) return;
  metrics_ << metrics_line << "\n";
  metrics_.flush();
}

std::string RoundLog::MetricsLine(const RoundMetrics& m, uint64_t total_up,
                                  uint64_t total_down,
                                  uint64_t total_model_down) const {
  nlohmann::json j = {
      {"round", m.round},
      {"attempt", m.attempt},
      {"aggregated", m.aggregated},
      {"selected", m.selected},
      {"answered", m.answered},
      {"dropped", m.dropped},
      {"rejected", m.rejected},
      {"train_loss", NumberOrNull(m.train_loss)},
      {"eval_loss", NumberOrNull(m.eval_loss)},
      {"server_eval_loss", NumberOrNull(m.server_eval_loss)},
      {"bytes_up", m.bytes_up},
      {"bytes_down", m.bytes_down},
      {"seconds", m.seconds},
      {"worker_seconds_max", m.max_train_seconds},
      {"edges_answered", m.edges_answered},
      {"rank_min", m.rank_min},
      {"rank_mean", m.rank_mean},
      {"rank_max", m.rank_max},
      {"frozen_fraction", m.frozen_fraction},
      {"epsilon", NumberOrNull(m.epsilon)},
      // "unbounded" with central placement; null without DP
      {"epsilon_cloud", std::isinf(m.epsilon_cloud)
                            ? nlohmann::json("unbounded")
                            : NumberOrNull(m.epsilon_cloud)},
      {"delta", NumberOrNull(m.delta)},
      {"clip_norm", m.clip_norm},
      {"noise_multiplier", m.noise_multiplier},
      {"unclipped_fraction", NumberOrNull(m.unclipped_fraction)},
      {"sampling_rate", m.sampling_rate},
      {"secagg_workers", m.secagg_workers},
      {"population", m.population},
      {"bytes_up_total", total_up},
      {"bytes_down_total", total_down},
      {"bytes_model_down_total", total_model_down},
      {"strategy", options_.strategy},
      {"unix_ms", UnixMillis()},
  };
  if (m.worker_bytes_up.size() <= kListedUploads) {
    j["bytes_up_workers"] = m.worker_bytes_up;  // {participant: bytes}
  } else {
    j["bytes_up_workers_summary"] = UploadSummary(m.worker_bytes_up);
  }
  return j.dump();
}

StatusOr<bool> RoundLog::Restore(const std::string& metrics_line) {
  if (!metrics_.is_open() || metrics_line.empty()) return false;
  const std::string& path = options_.metrics_file;
  // After the checkpoint of round K the file gains only K's line and the
  // skipped attempts of K+1, so K's line, if written, is near the end.
  const std::string wanted = metrics_line + "\n";
  uint64_t size = 0;
  ASSIGN_OR_RETURN(std::string tail,
                   ReadTail(path, kTailBytes + wanted.size(), &size));
  if (tail.rfind(wanted) != std::string::npos) return false;
  metrics_ << wanted;
  metrics_.flush();
  if (!metrics_) {
    return Status::IoError("logging.metrics_file: cannot append to '" + path +
                           "'");
  }
  return true;
}

}  // namespace coordinator
}  // namespace fedpeft
