// The round log: one readable line per round in the log, and one JSON line
// per round in logging.metrics_file (metrics.jsonl). What `fedpeft status`
// shows comes from the engine (RoundEngine::GetStatus); what a round
// measured is a RoundMetrics (round_types.h).
//
//   round 3/10 done: selected 4 answered 4 dropped 0 | train loss 1.2345
//     eval loss 1.3456 | up 12.0 KiB down 48.0 KiB | 2.1s
//
// After a crash the metrics file agrees with the checkpoint: a torn last
// line is dropped on open, and the cloud keeps each round's line in its
// checkpoint so a line lost between the checkpoint and the write is
// written on resume (Restore).
//
// Thread-safety: Write from one thread (the round loop).
#ifndef FEDPEFT_COORDINATOR_ROUND_LOG_H_
#define FEDPEFT_COORDINATOR_ROUND_LOG_H_

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/round_types.h"

namespace fedpeft {
namespace coordinator {

// "12.0 KiB", "3.20 MiB", "512 B".
std::string FormatBytes(uint64_t bytes);

struct RoundLogOptions {
  std::string label = "round";  // "edge round" at an edge
  int64_t total_rounds = 0;     // shown as "3/10"; 0 = not shown
  bool ranks = false;           // heterogeneous ranks: the round's ranks
  bool frozen = false;          // APF: the share of frozen tensors
  std::string strategy;         // named in every metrics line
  std::string metrics_file;     // empty = no metrics file
};

class RoundLog {
 public:
  // Opens (appends to) options.metrics_file, creating its folder; a last
  // line without its newline (a crash mid-write) is cut off, with a warning.
  static StatusOr<std::unique_ptr<RoundLog>> Open(RoundLogOptions options);

  // The metrics line of `m` (JSON, no newline) with the running byte
  // totals; `total_model_down`: base-model block bytes this server has sent
  // since it started (bytes_model_down_total; model delivery).
  std::string MetricsLine(const RoundMetrics& m, uint64_t total_up,
                          uint64_t total_down,
                          uint64_t total_model_down = 0) const;

  // Logs `m` and appends `metrics_line` (from MetricsLine) to the file.
  void Write(const RoundMetrics& m, const std::string& metrics_line);
  void Write(const RoundMetrics& m, uint64_t total_up, uint64_t total_down) {
    Write(m, MetricsLine(m, total_up, total_down));
  }

  // On resume from a checkpoint that kept `metrics_line` (its round's
  // line): appends it unless the file already has it, so a crash between
  // the checkpoint and Write loses no round. True if it was appended.
  StatusOr<bool> Restore(const std::string& metrics_line);

 private:
  explicit RoundLog(RoundLogOptions options) : options_(std::move(options)) {}
  const RoundLogOptions options_;
  std::ofstream metrics_;
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_ROUND_LOG_H_
