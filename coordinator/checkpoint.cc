#include "coordinator/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <vector>

#include "common/file_util.h"
#include "common/logging.h"
#include "model/safetensors.h"

namespace fedpeft {
namespace coordinator {
namespace {

namespace fs = std::filesystem;

// state.json: a few fields, the adapter config and per-module loop state
// (freezing EMAs, ranks): kilobytes for real federations.
constexpr uint64_t kMaxStateFileBytes = 64ull << 20;
// LATEST: one round folder name.
constexpr uint64_t kMaxLatestFileBytes = 4096;

std::string RoundFolderName(int64_t round) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "round-%06lld",
                static_cast<long long>(round));
  return buf;
}

void FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

}  // namespace

std::string TensorDigest(const TensorMap& tensors) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= b[i];
      h *= 1099511628211ull;
    }
  };
  for (const auto& kv : tensors) {
    mix(kv.first.data(), kv.first.size());
    torch::Tensor t = kv.second.detach().to(torch::kCPU).contiguous();
    mix(t.data_ptr(), t.numel() * t.element_size());
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx",
                static_cast<unsigned long long>(h));
  return buf;
}

Status SaveCheckpoint(const std::string& dir, const Checkpoint& ckpt,
                      int keep) {
  RETURN_IF_ERROR(EnsureDirectory(dir));
  const std::string name = RoundFolderName(ckpt.round);
  const std::string final_dir = JoinPath(dir, name);
  const std::string tmp_dir =
      JoinPath(dir, ".tmp-" + name + "-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(tmp_dir, ec);
  RETURN_IF_ERROR(EnsureDirectory(tmp_dir));

  RETURN_IF_ERROR(model::WriteSafetensors(
      JoinPath(tmp_dir, "global.safetensors"), ckpt.global));
  RETURN_IF_ERROR(model::WriteSafetensors(
      JoinPath(tmp_dir, "strategy.safetensors"), ckpt.strategy_state));
  nlohmann::json state = {
      {"format", "fedpeft-checkpoint-1"},
      {"round", ckpt.round},
      {"federation_id", ckpt.federation_id},
      {"rng_state", ckpt.rng_state},
      {"bytes_up", ckpt.bytes_up},
      {"bytes_down", ckpt.bytes_down},
      {"strategy", ckpt.strategy},
      {"base_model", ckpt.base_model},
      {"adapter_config", ckpt.adapter_config},
      {"extra", ckpt.extra},
      {"metrics_line", ckpt.metrics_line},
  };
  RETURN_IF_ERROR(
      WriteFileAtomic(JoinPath(tmp_dir, "state.json"), state.dump(2) + "\n"));
  FsyncDir(tmp_dir);

  fs::remove_all(final_dir, ec);  // a stale folder from a crashed run
  fs::rename(tmp_dir, final_dir, ec);
  if (ec) {
    return Status::IoError("checkpoint: rename '" + tmp_dir + "' -> '" +
                           final_dir + "': " + ec.message());
  }
  FsyncDir(dir);
  RETURN_IF_ERROR(WriteFileAtomic(JoinPath(dir, "LATEST"), name + "\n"));

  // Prune: keep the newest `keep` round folders.
  std::vector<std::string> rounds;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("round-", 0) == 0) rounds.push_back(n);
  }
  std::sort(rounds.begin(), rounds.end());
  for (size_t i = 0; i + keep < rounds.size(); ++i) {
    if (rounds[i] == name) continue;
    fs::remove_all(JoinPath(dir, rounds[i]), ec);
  }
  return Status::Ok();
}

StatusOr<Checkpoint> LoadCheckpointFolder(const std::string& folder) {
  const std::string state_path = JoinPath(folder, "state.json");
  ASSIGN_OR_RETURN(std::string text,
                   ReadFileToString(state_path, kMaxStateFileBytes));
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return Status::Corruption("checkpoint '" + state_path +
                              "': not valid JSON: " + e.what());
  }
  Checkpoint ckpt;
  try {
    if (state.value("format", "") != "fedpeft-checkpoint-1") {
      return Status::Corruption("checkpoint '" + state_path +
                                "': format: expected fedpeft-checkpoint-1");
    }
    ckpt.round = state.at("round").get<int64_t>();
    ckpt.federation_id = state.at("federation_id").get<std::string>();
    ckpt.rng_state = state.at("rng_state").get<std::string>();
    ckpt.bytes_up = state.at("bytes_up").get<uint64_t>();
    ckpt.bytes_down = state.at("bytes_down").get<uint64_t>();
    ckpt.strategy = state.at("strategy").get<std::string>();
    ckpt.base_model = state.at("base_model").get<std::string>();
    ckpt.adapter_config = state.at("adapter_config");
    // Absent in checkpoints of fedpeft before the hierarchy milestone.
    if (state.contains("extra")) ckpt.extra = state.at("extra");
    // Absent before the metrics file was kept in step with checkpoints.
    if (state.contains("metrics_line")) {
      ckpt.metrics_line = state.at("metrics_line").get<std::string>();
    }
  } catch (const nlohmann::json::exception& e) {
    return Status::Corruption("checkpoint '" + state_path +
                              "': missing or mistyped field: " + e.what());
  }
  if (ckpt.round < 1) {
    return Status::Corruption("checkpoint '" + state_path +
                              "': round must be >= 1, got " +
                              std::to_string(ckpt.round));
  }
  ASSIGN_OR_RETURN(
      model::SafetensorsContents global,
      model::ReadSafetensors(JoinPath(folder, "global.safetensors")));
  ckpt.global = std::move(global.tensors);
  ASSIGN_OR_RETURN(
      model::SafetensorsContents strategy,
      model::ReadSafetensors(JoinPath(folder, "strategy.safetensors")));
  ckpt.strategy_state = std::move(strategy.tensors);
  return ckpt;
}

StatusOr<Checkpoint> LoadLatestCheckpoint(const std::string& dir) {
  const std::string latest = JoinPath(dir, "LATEST");
  if (!PathExists(latest)) {
    return Status::NotFound("no checkpoint in '" + dir + "'");
  }
  ASSIGN_OR_RETURN(std::string name,
                   ReadFileToString(latest, kMaxLatestFileBytes));
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) {
    name.pop_back();
  }
  if (name.rfind("round-", 0) != 0 || name.find('/') != std::string::npos) {
    return Status::Corruption("checkpoint '" + latest +
                              "': expected a round folder name, got '" + name +
                              "'");
  }
  return LoadCheckpointFolder(JoinPath(dir, name));
}

StatusOr<CheckpointAdapter> LoadCheckpointAdapter(const std::string& path) {
  StatusOr<Checkpoint> ckpt = PathExists(JoinPath(path, "state.json"))
                                  ? LoadCheckpointFolder(path)
                                  : LoadLatestCheckpoint(path);
  if (!ckpt.ok()) return ckpt.status();
  CheckpointAdapter out;
  ASSIGN_OR_RETURN(out.adapter.options,
                   peft::AdapterConfigFromJson(ckpt->adapter_config.dump(),
                                               path + " (state.json)"));
  out.adapter.tensors = std::move(ckpt->global);
  out.adapter.base_model = ckpt->base_model;
  out.round = ckpt->round;
  out.federation_id = ckpt->federation_id;
  return out;
}

}  // namespace coordinator
}  // namespace fedpeft
