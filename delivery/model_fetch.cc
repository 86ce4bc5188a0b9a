#include "delivery/model_fetch.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "common/file_util.h"
#include "common/logging.h"
#include "delivery/sha256.h"

namespace fedpeft {
namespace delivery {
namespace {

namespace fs = std::filesystem;

constexpr int kFetchAttempts = 3;
// A GetBlocks call asks for at most this many bytes (and at least one
// block), so one call stays well inside server.rpc_timeout_s.
constexpr uint64_t kMaxBatchBytes = 32ull << 20;

// Whether `folder` holds exactly the files of `m` (extra files aside):
// sizes and every block's hash.
Status CheckAssembled(const ModelManifest& m, const std::string& folder) {
  std::string buf;
  for (const ManifestFile& f : m.files) {
    const std::string path = JoinPath(folder, f.path);
    std::ifstream in(path, std::ios::binary);
    std::error_code ec;
    if (!in || fs::file_size(path, ec) != f.size || ec) {
      return Status::Corruption("'" + path + "' is missing or not " +
                                std::to_string(f.size) + " bytes");
    }
    for (size_t b = 0; b < f.blocks.size(); ++b) {
      buf.resize(m.BlockLength(f, b));
      if (!in.read(buf.data(), static_cast<std::streamsize>(buf.size())) ||
          Sha256Hex(buf) != f.blocks[b]) {
        return Status::Corruption("'" + path + "' block " + std::to_string(b) +
                                  " does not match the manifest");
      }
    }
  }
  return Status::Ok();
}

// Writes the files of `m` from `store` under `folder` (which exists).
Status WriteFiles(const ModelManifest& m, BlockStore& store,
                  const std::string& folder) {
  for (const ManifestFile& f : m.files) {
    const fs::path path = fs::path(folder) / f.path;
    RETURN_IF_ERROR(EnsureDirectory(path.parent_path().string()));
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) return Status::IoError("cannot create '" + path.string() + "'");
    for (size_t b = 0; b < f.blocks.size(); ++b) {
      StatusOr<std::string> data = store.Get(f.blocks[b]);
      if (!data.ok()) {
        return data.status().WithContext("assembling '" + f.path + "'");
      }
      if (data->size() != m.BlockLength(f, b)) {
        return Status::Corruption(
            "assembling '" + f.path + "': block " + std::to_string(b) + " (" +
            f.blocks[b] + ") has " + std::to_string(data->size()) +
            " bytes, expected " + std::to_string(m.BlockLength(f, b)));
      }
      out.write(data->data(), static_cast<std::streamsize>(data->size()));
    }
    out.close();
    if (!out) return Status::IoError("write of '" + path.string() + "' failed");
  }
  return Status::Ok();
}

std::string LoadPath(const ModelManifest& m, const std::string& folder) {
  return m.entry.empty() ? folder : JoinPath(folder, m.entry);
}

}  // namespace

Status FetchMissingBlocks(BlockRemote& remote, const ModelManifest& manifest,
                          BlockStore& store, FetchStats* stats) {
  FetchStats local;
  FetchStats& st = stats ? *stats : local;
  std::map<std::string, uint64_t> length;  // each distinct block once
  for (const ManifestFile& f : manifest.files) {
    for (size_t b = 0; b < f.blocks.size(); ++b) {
      length.emplace(f.blocks[b], manifest.BlockLength(f, b));
    }
  }
  std::vector<std::string> missing;
  for (const auto& [hash, len] : length) {
    if (store.Has(hash)) {
      StatusOr<std::string> got = store.Get(hash);
      if (got.ok() && got->size() == len) {
        ++st.blocks_cached;
        st.bytes_cached += len;
        continue;
      }
      if (!got.ok() && got.status().code() != StatusCode::kCorruption) {
        return got.status();
      }
      ++st.corrupt;
    }
    missing.push_back(hash);
  }
  for (int attempt = 1; attempt <= kFetchAttempts && !missing.empty();
       ++attempt) {
    std::vector<std::string> still;
    for (size_t i = 0; i < missing.size();) {
      std::vector<std::string> batch;
      uint64_t bytes = 0;
      while (i < missing.size() && batch.size() < kMaxBlocksPerRequest &&
             (batch.empty() || bytes + length[missing[i]] <= kMaxBatchBytes)) {
        bytes += length[missing[i]];
        batch.push_back(missing[i++]);
      }
      std::set<std::string> waiting(batch.begin(), batch.end());
      Status s = remote.GetBlocks(
          batch, [&](const std::string& hash, std::string data) -> Status {
            if (!waiting.count(hash)) {
              // Asked for earlier in this call and stored, or never asked.
              if (length.count(hash) && store.Has(hash)) return Status::Ok();
              return Status::InvalidArgument("the server sent block '" +
                                             hash.substr(0, 80) +
                                             "', which was not asked for");
            }
            Status put =
                data.size() == length[hash]
                    ? store.Put(hash, data)
                    : Status::Corruption("block " + hash + ": received " +
                                         std::to_string(data.size()) +
                                         " bytes, expected " +
                                         std::to_string(length[hash]));
            if (put.code() == StatusCode::kCorruption) {
              // Damaged on the way: asked for again below.
              ++st.corrupt;
              FP_LOG_WARN("blocks", "{}; asking for it again", put.message());
              return Status::Ok();
            }
            RETURN_IF_ERROR(put);
            waiting.erase(hash);
            ++st.blocks_fetched;
            st.bytes_fetched += data.size();
            return Status::Ok();
          });
      RETURN_IF_ERROR(s);
      still.insert(still.end(), waiting.begin(), waiting.end());
    }
    missing = std::move(still);
  }
  if (!missing.empty()) {
    return Status::Corruption(
        std::to_string(missing.size()) +
        " blocks still missing or corrupt "
        "after " +
        std::to_string(kFetchAttempts) + " attempts (e.g. block " +
        missing.front() +
        "): the server did not send them, or sent damaged bytes each time");
  }
  return Status::Ok();
}

StatusOr<std::string> AssembleModel(const ModelManifest& manifest,
                                    BlockStore& store,
                                    const std::string& cache_dir) {
  const std::string models = JoinPath(cache_dir, "models");
  const std::string folder = JoinPath(models, manifest.id);
  if (IsDirectory(folder)) {
    Status ok = CheckAssembled(manifest, folder);
    if (ok.ok()) return LoadPath(manifest, folder);
    FP_LOG_WARN("blocks", "assembled model {}: {}; assembling it again", folder,
                ok.message());
    std::error_code ec;
    fs::remove_all(folder, ec);
    if (ec)
      return Status::IoError("cannot remove '" + folder + "': " + ec.message());
  }
  RETURN_IF_ERROR(EnsureDirectory(models));
  static std::atomic<int> counter{0};
  const std::string tmp = JoinPath(
      models, ".tmp-" + manifest.id.substr(0, 16) + "-" +
                  std::to_string(::getpid()) + "-" + std::to_string(counter++));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  RETURN_IF_ERROR(EnsureDirectory(tmp));
  Status s = WriteFiles(manifest, store, tmp);
  if (s.ok()) {
    fs::rename(tmp, folder, ec);
    // Another process may have assembled the same model meanwhile.
    if (ec && IsDirectory(folder))
      s = CheckAssembled(manifest, folder);
    else if (ec)
      s = Status::IoError("cannot rename '" + tmp + "' to '" + folder +
                          "': " + ec.message());
  }
  fs::remove_all(tmp, ec);
  RETURN_IF_ERROR(s);
  return LoadPath(manifest, folder);
}

StatusOr<std::string> DeliverModel(BlockRemote& remote,
                                   const std::string& cache_dir,
                                   const std::string& who, FetchStats* stats,
                                   ModelManifest* manifest_out) {
  ASSIGN_OR_RETURN(ModelManifest manifest, remote.GetManifest());
  RETURN_IF_ERROR(ValidateManifest(manifest, "the server's model manifest"));
  BlockStore store(JoinPath(cache_dir, "blocks"));
  RETURN_IF_ERROR(store.Open());
  FetchStats local;
  FetchStats& st = stats ? *stats : local;
  RETURN_IF_ERROR(FetchMissingBlocks(remote, manifest, store, &st));
  ASSIGN_OR_RETURN(std::string path, AssembleModel(manifest, store, cache_dir));
  FP_LOG_INFO("blocks",
              "'{}': model {} ({} files, {} B in {} blocks of {} B): fetched "
              "{} blocks ({} B), {} from the cache ({} B), {} corrupt; "
              "loading {}",
              who, manifest.id.substr(0, 16), manifest.files.size(),
              manifest.total_bytes(), manifest.total_blocks(),
              manifest.block_size, st.blocks_fetched, st.bytes_fetched,
              st.blocks_cached, st.bytes_cached, st.corrupt, path);
  if (manifest_out) *manifest_out = std::move(manifest);
  return path;
}

}  // namespace delivery
}  // namespace fedpeft
