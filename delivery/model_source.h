// What a server answers base-model requests from (GetModelManifest,
// GetModelBlocks; coordinator/service.h):
//
//   LocalModelSource   the model at model.path: the cloud's, or an edge
//                      whose model is local. Hashes the files on the first
//                      request (once) and reads blocks from them.
//   CachedModelSource  an edge with model.source upstream: its block store,
//                      filled from the cloud. A block missing or corrupt
//                      there is fetched from the cloud once, however many
//                      workers ask for it at the same time (single flight).
//
// Every block handed out has been checked against its name.
//
// Thread-safety: both sources are safe from any number of gRPC threads.
#ifndef FEDPEFT_DELIVERY_MODEL_SOURCE_H_
#define FEDPEFT_DELIVERY_MODEL_SOURCE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"
#include "delivery/block_store.h"
#include "delivery/model_fetch.h"
#include "delivery/model_manifest.h"

namespace fedpeft {
namespace delivery {

struct SourceStats {
  int64_t blocks_served = 0;  // blocks handed out by ReadBlock
  uint64_t bytes_served = 0;
  // CachedModelSource: blocks (and bytes) fetched from upstream after
  // start-up, and requests that waited for another request's fetch of the
  // same block instead of fetching it again.
  int64_t blocks_fetched = 0;
  uint64_t bytes_fetched = 0;
  int64_t joined_fetches = 0;
};

class ModelSource {
 public:
  virtual ~ModelSource() = default;
  // The manifest (built or fetched once; the same object every time).
  virtual StatusOr<std::shared_ptr<const ModelManifest>> Manifest() = 0;
  // The bytes of block `hash` of the manifest, checked. InvalidArgument
  // when `hash` is not a block of the manifest.
  virtual StatusOr<std::string> ReadBlock(const std::string& hash) = 0;
  virtual SourceStats stats() const = 0;
};

class LocalModelSource final : public ModelSource {
 public:
  // Nothing is read until the first request. `block_size`: model.block_size.
  LocalModelSource(std::string model_path, uint64_t block_size);

  StatusOr<std::shared_ptr<const ModelManifest>> Manifest() override;
  // Corruption when the file's bytes no longer match the manifest (the
  // model changed on disk after the server started: restart it).
  StatusOr<std::string> ReadBlock(const std::string& hash) override;
  SourceStats stats() const override;

 private:
  struct Location {
    std::string path;  // full path of the file
    uint64_t offset = 0;
    uint64_t length = 0;
  };
  const std::string model_path_;
  const uint64_t block_size_;
  std::mutex mu_;
  std::shared_ptr<const ModelManifest> manifest_;  // GUARDED_BY(mu_)
  std::map<std::string, Location> where_;          // GUARDED_BY(mu_)
  std::atomic<int64_t> blocks_served_{0};
  std::atomic<uint64_t> bytes_served_{0};
};

class CachedModelSource final : public ModelSource {
 public:
  // REQUIRES: `store` and `upstream` outlive the source; `manifest` is
  // valid (ValidateManifest). `upstream` must be safe from several threads.
  CachedModelSource(std::shared_ptr<const ModelManifest> manifest,
                    BlockStore& store, BlockRemote& upstream);

  StatusOr<std::shared_ptr<const ModelManifest>> Manifest() override {
    return manifest_;
  }
  StatusOr<std::string> ReadBlock(const std::string& hash) override;
  SourceStats stats() const override;

 private:
  // One fetch of a block from upstream, which concurrent readers share.
  struct Flight {
    bool done = false;  // GUARDED_BY(mu_)
    Status status;      // GUARDED_BY(mu_)
    std::string data;   // GUARDED_BY(mu_)
  };
  StatusOr<std::string> FetchOnce(const std::string& hash);

  const std::shared_ptr<const ModelManifest> manifest_;
  std::map<std::string, uint64_t> length_;  // block -> bytes; immutable
  BlockStore& store_;
  BlockRemote& upstream_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<Flight>> flights_;  // GUARDED_BY(mu_)
  std::atomic<int64_t> blocks_served_{0};
  std::atomic<uint64_t> bytes_served_{0};
  std::atomic<int64_t> blocks_fetched_{0};
  std::atomic<uint64_t> bytes_fetched_{0};
  std::atomic<int64_t> joined_{0};
};

}  // namespace delivery
}  // namespace fedpeft

#endif  // FEDPEFT_DELIVERY_MODEL_SOURCE_H_
