#include "delivery/model_source.h"

#include <fstream>

#include "common/file_util.h"
#include "common/logging.h"
#include "delivery/sha256.h"

namespace fedpeft {
namespace delivery {

// ---- LocalModelSource
// --------------------------------------------------------

LocalModelSource::LocalModelSource(std::string model_path, uint64_t block_size)
    : model_path_(std::move(model_path)), block_size_(block_size) {}

StatusOr<std::shared_ptr<const ModelManifest>> LocalModelSource::Manifest() {
  std::lock_guard<std::mutex> lock(mu_);
  if (manifest_) return manifest_;
  ASSIGN_OR_RETURN(ModelManifest m, BuildManifest(model_path_, block_size_));
  const bool one_file = !m.entry.empty();
  for (const ManifestFile& f : m.files) {
    const std::string full =
        one_file ? model_path_ : JoinPath(model_path_, f.path);
    for (size_t b = 0; b < f.blocks.size(); ++b) {
      where_.emplace(f.blocks[b],
                     Location{full, static_cast<uint64_t>(b) * m.block_size,
                              m.BlockLength(f, b)});
    }
  }
  FP_LOG_INFO("blocks",
              "model {}: manifest {} ({} files, {} B in {} blocks "
              "of {} B)",
              model_path_, m.id.substr(0, 16), m.files.size(), m.total_bytes(),
              m.total_blocks(), m.block_size);
  manifest_ = std::make_shared<const ModelManifest>(std::move(m));
  return manifest_;
}

StatusOr<std::string> LocalModelSource::ReadBlock(const std::string& hash) {
  RETURN_IF_ERROR(Manifest().status());
  Location at;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = where_.find(hash);
    if (it == where_.end()) {
      return Status::InvalidArgument("block " + hash.substr(0, 80) +
                                     " is not a block of model " +
                                     manifest_->id);
    }
    at = it->second;
  }
  std::ifstream in(at.path, std::ios::binary);
  std::string data(at.length, '\0');
  in.seekg(static_cast<std::streamoff>(at.offset));
  if (!in || !in.read(data.data(), static_cast<std::streamsize>(at.length))) {
    return Status::IoError("model file '" + at.path + "': cannot read " +
                           std::to_string(at.length) + " bytes at " +
                           std::to_string(at.offset));
  }
  if (Sha256Hex(data) != hash) {
    return Status::Corruption("model file '" + at.path +
                              "' changed since its "
                              "manifest was built (block at byte " +
                              std::to_string(at.offset) +
                              "); restart the server to serve the new model");
  }
  ++blocks_served_;
  bytes_served_ += data.size();
  return data;
}

SourceStats LocalModelSource::stats() const {
  SourceStats s;
  s.blocks_served = blocks_served_;
  s.bytes_served = bytes_served_;
  return s;
}

// ---- CachedModelSource
// -------------------------------------------------------

CachedModelSource::CachedModelSource(
    std::shared_ptr<const ModelManifest> manifest, BlockStore& store,
    BlockRemote& upstream)
    : manifest_(std::move(manifest)), store_(store), upstream_(upstream) {
  for (const ManifestFile& f : manifest_->files) {
    for (size_t b = 0; b < f.blocks.size(); ++b) {
      length_.emplace(f.blocks[b], manifest_->BlockLength(f, b));
    }
  }
}

StatusOr<std::string> CachedModelSource::ReadBlock(const std::string& hash) {
  auto len = length_.find(hash);
  if (len == length_.end()) {
    return Status::InvalidArgument("block " + hash.substr(0, 80) +
                                   " is not a block of model " + manifest_->id);
  }
  StatusOr<std::string> data = store_.Get(hash);
  if (!data.ok() && (data.status().code() == StatusCode::kNotFound ||
                     data.status().code() == StatusCode::kCorruption)) {
    data = FetchOnce(hash);  // Get logged a corrupt block
  }
  RETURN_IF_ERROR(data.status());
  if (data->size() != len->second) {
    return Status::Corruption(
        "block " + hash + " has " + std::to_string(data->size()) +
        " bytes, expected " + std::to_string(len->second));
  }
  ++blocks_served_;
  bytes_served_ += data->size();
  return data;
}

StatusOr<std::string> CachedModelSource::FetchOnce(const std::string& hash) {
  std::shared_ptr<Flight> flight;
  {
    std::unique_lock<std::mutex> lock(mu_);
    auto it = flights_.find(hash);
    if (it == flights_.end()) {
      flight = std::make_shared<Flight>();
      flights_.emplace(hash, flight);
    } else {
      flight = it->second;
      ++joined_;
      cv_.wait(lock, [&] { return flight->done; });
      if (!flight->status.ok()) return flight->status;
      return flight->data;
    }
  }
  // The leader: fetch, store, then hand the result to every waiter.
  std::string got;
  bool received = false;
  Status s = upstream_.GetBlocks(
      {hash}, [&](const std::string& h, std::string bytes) -> Status {
        if (h != hash) {
          return Status::InvalidArgument(
              "upstream sent block " + h.substr(0, 80) + ", asked for " + hash);
        }
        RETURN_IF_ERROR(store_.Put(hash, bytes));
        got = std::move(bytes);
        received = true;
        return Status::Ok();
      });
  if (s.ok() && !received) {
    s = Status::Unavailable("upstream did not send block " + hash);
  }
  if (s.ok()) {
    ++blocks_fetched_;
    bytes_fetched_ += got.size();
    FP_LOG_INFO("blocks",
                "block {} ({} B) fetched from upstream into the "
                "cache",
                hash.substr(0, 16), got.size());
  } else {
    FP_LOG_WARN("blocks", "fetching block {} from upstream: {}", hash,
                s.message());
  }
  std::lock_guard<std::mutex> lock(mu_);
  flight->done = true;
  flight->status = s;
  if (s.ok()) flight->data = got;
  flights_.erase(hash);
  cv_.notify_all();
  if (!s.ok()) return s;
  return got;
}

SourceStats CachedModelSource::stats() const {
  SourceStats s;
  s.blocks_served = blocks_served_;
  s.bytes_served = bytes_served_;
  s.blocks_fetched = blocks_fetched_;
  s.bytes_fetched = bytes_fetched_;
  s.joined_fetches = joined_;
  return s;
}

}  // namespace delivery
}  // namespace fedpeft
