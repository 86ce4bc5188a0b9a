#include "delivery/block_store.h"

#include <cstdio>

#include "common/file_util.h"
#include "common/logging.h"
#include "delivery/model_manifest.h"
#include "delivery/sha256.h"

namespace fedpeft {
namespace delivery {

Status BlockStore::Open() { return EnsureDirectory(dir_); }

std::string BlockStore::PathOf(const std::string& hash) const {
  return JoinPath(JoinPath(dir_, hash.substr(0, 2)), hash);
}

bool BlockStore::Has(const std::string& hash) const {
  return PathExists(PathOf(hash));
}

StatusOr<std::string> BlockStore::Get(const std::string& hash) const {
  const std::string path = PathOf(hash);
  if (!PathExists(path)) {
    return Status::NotFound("block " + hash + " is not in the store " + dir_);
  }
  // A block larger than any block may be is corrupt as well.
  StatusOr<std::string> data = ReadFileToString(path, kMaxBlockSize);
  std::string got = data.ok() ? Sha256Hex(*data) : std::string();
  if (data.ok() && got == hash) return data;
  if (!data.ok() && data.status().code() != StatusCode::kInvalidArgument) {
    return data.status();  // an I/O error says nothing about the bytes
  }
  ++corrupt_found_;
  const std::string why =
      data.ok() ? "its bytes hash to " + got : data.status().message();
  FP_LOG_WARN("blocks",
              "corrupt block {} in {} ({}): deleted, it will be fetched again",
              hash, path, why);
  std::remove(path.c_str());
  return Status::Corruption("block " + hash + " in " + path + " was corrupt (" +
                            why + ") and was deleted");
}

Status BlockStore::Put(const std::string& hash, const std::string& data) {
  const std::string got = Sha256Hex(data);
  if (got != hash) {
    return Status::Corruption("block " + hash + ": the " +
                              std::to_string(data.size()) +
                              " bytes received hash to " + got);
  }
  RETURN_IF_ERROR(EnsureDirectory(JoinPath(dir_, hash.substr(0, 2))));
  return WriteFileAtomic(PathOf(hash), data);
}

}  // namespace delivery
}  // namespace fedpeft
