// Coordinator checkpoints: everything needed to resume a federation at the
// next round, written after every round.
//
//   <dir>/round-000003/global.safetensors    the global adapter (PEFT keys)
//   <dir>/round-000003/strategy.safetensors  strategy state (may be empty)
//   <dir>/round-000003/state.json            round, ids, RNG, totals
//   <dir>/LATEST                             "round-000003"
//
// Atomicity: a round folder is written under a temporary name (each file
// fsynced), renamed into place, the directory fsynced, and only then LATEST
// is replaced atomically. A crash at any point leaves LATEST naming a
// complete folder (or absent on the very first round).
//
// Thread-safety: free functions; callers serialize writes to one dir.
#ifndef FEDPEFT_COORDINATOR_CHECKPOINT_H_
#define FEDPEFT_COORDINATOR_CHECKPOINT_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/status.h"
#include "model/llama.h"
#include "peft/peft_io.h"

namespace fedpeft {
namespace coordinator {

struct Checkpoint {
  int64_t round = 0;  // rounds completed
  std::string federation_id;
  std::string rng_state;  // std::mt19937_64 state as text
  uint64_t bytes_up = 0;  // totals so far
  uint64_t bytes_down = 0;
  std::string strategy;           // name, checked on resume
  std::string base_model;         // model path, for export --merge
  nlohmann::json adapter_config;  // PEFT adapter_config.json contents
  TensorMap global;               // the global adapter
  TensorMap strategy_state;
  // Round-loop state beyond the strategy's: adaptive-freezing EMAs
  // ("apf"), assigned ranks ("ranks").
  nlohmann::json extra = nlohmann::json::object();
  // The round's line of logging.metrics_file, written again on resume if
  // the crash came before it reached the file (RoundLog::Restore).
  std::string metrics_line;
};

// Writes `ckpt` as <dir>/round-NNNNNN and points LATEST at it; removes
// older round folders beyond `keep`.
Status SaveCheckpoint(const std::string& dir, const Checkpoint& ckpt, int keep);

// Loads the folder LATEST names. NotFound when `dir` has no LATEST (a fresh
// start); Corruption naming the file when a file is damaged.
StatusOr<Checkpoint> LoadLatestCheckpoint(const std::string& dir);

// Loads one round folder.
StatusOr<Checkpoint> LoadCheckpointFolder(const std::string& folder);

// The global adapter of a checkpoint as a saved adapter (options from its
// adapter_config, base_model from its state), from a round folder (it has
// state.json) or a checkpoint directory (its LATEST); `round` and
// `federation_id` say which. Errors name the path.
struct CheckpointAdapter {
  peft::SavedAdapter adapter;
  int64_t round = 0;
  std::string federation_id;
};
StatusOr<CheckpointAdapter> LoadCheckpointAdapter(const std::string& path);

// A short hex digest of the tensors' names and bytes (FNV-1a 64), for logs
// that show a reload is bit-identical.
std::string TensorDigest(const TensorMap& tensors);

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_CHECKPOINT_H_
