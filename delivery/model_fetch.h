// Getting a base model from a server into a local cache (model.source
// upstream): the manifest, then the blocks the block store lacks (or holds
// corrupt), then the files assembled from the blocks into
// <cache_dir>/models/<manifest id>/, which the loader reads like any model
// folder.
//
//   DeliverModel:  remote.GetManifest ─▶ ValidateManifest
//     ─▶ FetchMissingBlocks (batches of GetBlocks; each block checked
//        before it is stored; a restart fetches only what is missing)
//     ─▶ AssembleModel (tmp folder + rename; an existing folder is checked
//        block by block first and rebuilt when it does not match)
//
// The remote is an interface so the same code runs over gRPC
// (worker/model_download.h) and against fakes in tests.
//
// Thread-safety: functions are reentrant; a BlockRemote's thread-safety is
// its own (model_download's is safe from any thread).
#ifndef FEDPEFT_DELIVERY_MODEL_FETCH_H_
#define FEDPEFT_DELIVERY_MODEL_FETCH_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "delivery/block_store.h"
#include "delivery/model_manifest.h"

namespace fedpeft {
namespace delivery {

// The server a model comes from (the cloud for an edge; the edge or the
// cloud for a worker).
class BlockRemote {
 public:
  virtual ~BlockRemote() = default;
  // The server's manifest (the caller validates it).
  virtual StatusOr<ModelManifest> GetManifest() = 0;
  // Asks for `hashes` (at most kMaxBlocksPerRequest) and calls
  // on_block(hash, bytes) for each block received, in any order; an error
  // from on_block ends the call with that error. Blocks may come more than
  // once (a retried call), and a block not sent is the caller's to notice.
  using OnBlock = std::function<Status(const std::string&, std::string)>;
  virtual Status GetBlocks(const std::vector<std::string>& hashes,
                           const OnBlock& on_block) = 0;
};

// Most blocks one GetBlocks asks for (the server refuses more).
inline constexpr size_t kMaxBlocksPerRequest = 256;

struct FetchStats {
  int64_t blocks_fetched = 0;  // received, checked and stored
  uint64_t bytes_fetched = 0;
  int64_t blocks_cached = 0;  // already in the store and valid
  uint64_t bytes_cached = 0;
  int64_t corrupt = 0;  // corrupt blocks found (in the store or received)
};

// Makes the store hold every block of `manifest`, fetching those it lacks
// or holds corrupt from `remote`. A block received whose bytes do not match
// its name (corrupted on the way) is not stored and is asked for again, up
// to three attempts in all. REQUIRES: ValidateManifest(manifest) is OK.
Status FetchMissingBlocks(BlockRemote& remote, const ModelManifest& manifest,
                          BlockStore& store, FetchStats* stats);

// Assembles the files of `manifest` from `store` (every block checked as
// it is read) into <cache_dir>/models/<id>/ atomically and returns the path
// to load: that folder, or the file manifest.entry names. A folder already
// there is checked against the manifest first and rebuilt if it differs.
// REQUIRES: the store holds every block (FetchMissingBlocks).
StatusOr<std::string> AssembleModel(const ModelManifest& manifest,
                                    BlockStore& store,
                                    const std::string& cache_dir);

// The whole way: manifest, blocks into <cache_dir>/blocks, assembly; logs
// what came from the remote and what from the cache. `who` names the
// fetching participant in logs. *manifest_out (when given) gets the
// manifest.
StatusOr<std::string> DeliverModel(BlockRemote& remote,
                                   const std::string& cache_dir,
                                   const std::string& who,
                                   FetchStats* stats = nullptr,
                                   ModelManifest* manifest_out = nullptr);

}  // namespace delivery
}  // namespace fedpeft

#endif  // FEDPEFT_DELIVERY_MODEL_FETCH_H_
