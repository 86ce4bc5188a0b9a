// The cloud's checkpoint store: after every round, everything a restarted
// coordinator needs to go on as if it had not stopped — the global adapter,
// the strategy's state, the selection generator, byte totals, and each
// stage's own state (APF's EMAs, assigned ranks, the DP accountant) — in
// the atomic layout of checkpoint.h; on start, the same read back.
//
// Thread-safety: the round loop only.
#ifndef FEDPEFT_COORDINATOR_CHECKPOINT_STORE_H_
#define FEDPEFT_COORDINATOR_CHECKPOINT_STORE_H_

#include <string>

#include "coordinator/checkpoint.h"
#include "coordinator/round_engine.h"

namespace fedpeft {
namespace coordinator {

class CheckpointStore {
 public:
  // REQUIRES: `engine` outlives the store.
  CheckpointStore(const CheckpointOptions& options, RoundEngine& engine)
      : options_(options), engine_(engine) {}

  // Resumes `engine` from the latest checkpoint of options.dir, checking it
  // belongs to this federation, strategy and adapter. Returns the rounds it
  // had completed (0 on a fresh start).
  StatusOr<int64_t> Restore();
  // The restored round's metrics line ("" on a fresh start).
  const std::string& restored_metrics_line() const {
    return restored_metrics_line_;
  }
  // Writes the state after `round`, with its metrics line, atomically.
  Status Save(int64_t round, const std::string& metrics_line);

 private:
  const CheckpointOptions options_;
  RoundEngine& engine_;
  std::string restored_metrics_line_;
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_CHECKPOINT_STORE_H_
