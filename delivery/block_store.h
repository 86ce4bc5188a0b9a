// A content-addressed store of model blocks on disk: block <hash> lives at
// <dir>/<first two hex digits>/<hash>, and its bytes hash to its name.
//
// Every block is checked on the way in (Put) and on the way out (Get): a
// file whose bytes no longer hash to its name (a bad disk, a torn copy,
// someone's editor) is logged, deleted and reported as Corruption, so the
// caller fetches it again. Writes are atomic (temp file + rename): a crash
// leaves the old state or the new block, never a torn one, and a restarted
// process finds every block it already had (fetches resume).
//
// One store may back any number of models: blocks shared by two models
// (two fine-tunes of one base) are stored once.
//
// Thread-safety: safe from any number of threads and processes (every write
// is a rename of a complete file; a block is the same bytes whoever writes
// it). The counters are atomic.
#ifndef FEDPEFT_DELIVERY_BLOCK_STORE_H_
#define FEDPEFT_DELIVERY_BLOCK_STORE_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace fedpeft {
namespace delivery {

class BlockStore {
 public:
  // `dir`: the store's root (created by Open).
  explicit BlockStore(std::string dir) : dir_(std::move(dir)) {}
  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  // Creates the root folder; IoError naming it when that fails.
  Status Open();

  // Whether a file for `hash` exists (not checked: Get checks).
  bool Has(const std::string& hash) const;
  // The bytes of block `hash`, checked against its name. NotFound when
  // absent; Corruption (after deleting the file and logging) when its
  // bytes hash to another name or it is larger than kMaxBlockSize.
  // REQUIRES: IsSha256Hex(hash).
  StatusOr<std::string> Get(const std::string& hash) const;
  // Stores `data` as block `hash` atomically. Corruption (nothing written)
  // when `data` does not hash to `hash`.
  Status Put(const std::string& hash, const std::string& data);

  // Where block `hash` lives (whether or not it is there).
  std::string PathOf(const std::string& hash) const;
  const std::string& dir() const { return dir_; }
  // Corrupt blocks Get found (and deleted) since construction.
  int64_t corrupt_found() const { return corrupt_found_; }

 private:
  const std::string dir_;
  mutable std::atomic<int64_t> corrupt_found_{0};
};

}  // namespace delivery
}  // namespace fedpeft

#endif  // FEDPEFT_DELIVERY_BLOCK_STORE_H_
