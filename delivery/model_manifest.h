// The manifest of a base model as content-addressed blocks: what a server
// sends first when a worker or an edge fetches its model (model.source
// upstream), and what everything fetched is checked against.
//
//   model.path (an HF folder, or one llama2.c .bin / .gguf file)
//     └─ files, sorted by relative path: path, size, blocks
//          └─ block i = bytes [i*block_size, min(size, (i+1)*block_size))
//             named by the SHA-256 of those bytes (64 lowercase hex digits)
//   id = SHA-256 of the canonical text of all of the above (CanonicalText)
//
// Two models that share a file (two fine-tunes of one base: the same
// *.safetensors, another config or tokenizer) share its blocks, so a cache
// keyed by block name holds them once.
//
// Everything here that comes from the network goes through
// ValidateManifest before use: bounded sizes and counts, relative paths of
// plain components only, block counts that match the sizes, and an id that
// matches the content.
//
// Thread-safety: plain values and free functions.
#ifndef FEDPEFT_DELIVERY_MODEL_MANIFEST_H_
#define FEDPEFT_DELIVERY_MODEL_MANIFEST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace delivery {

// Bounds of block_size (model.block_size): a block travels in one gRPC
// message, which must stay under the smallest receive limit (1 MiB is the
// least server.max_message_mb; 16 MiB the default).
inline constexpr uint64_t kMinBlockSize = 4 << 10;      // 4 KiB
inline constexpr uint64_t kMaxBlockSize = 8 << 20;      // 8 MiB
inline constexpr uint64_t kDefaultBlockSize = 4 << 20;  // 4 MiB
inline constexpr size_t kMaxManifestFiles = 4096;       // HF folders: tens
inline constexpr size_t kMaxPathBytes = 512;            // per file path
inline constexpr uint64_t kMaxModelBytes = 1ull << 40;  // 1 TiB in all
inline constexpr size_t kMaxManifestBlocks = 1u << 22;  // 4 Mi blocks

struct ManifestFile {
  std::string path;  // relative, '/'-separated (ValidateRelativePath)
  uint64_t size = 0;
  std::vector<std::string> blocks;  // SHA-256 hex of each block, in order
};

struct ModelManifest {
  uint64_t block_size = kDefaultBlockSize;
  // What the loader is given, relative to the assembled folder: empty for
  // the folder itself (an HF model), else one of `files` (a single-file
  // model: llama2.c .bin or .gguf).
  std::string entry;
  std::vector<ManifestFile> files;  // sorted by path, unique
  std::string id;                   // ManifestId(*this)

  // Bytes of block `index` of `file` (the last block of a file may be
  // shorter). REQUIRES: index < file.blocks.size().
  uint64_t BlockLength(const ManifestFile& file, size_t index) const;
  uint64_t total_bytes() const;
  size_t total_blocks() const;
};

// OK when `path` is a relative path of plain components: not empty, at
// most kMaxPathBytes, no leading '/', no empty, "." or ".." component, no
// backslash and no control character. `field` names it in the error (e.g.
// "manifest.files[3].path").
Status ValidateRelativePath(const std::string& path, const std::string& field);

// The text the id hashes: a version line, block_size, entry, then per file
// its size and path and its block names, one a line.
std::string CanonicalText(const ModelManifest& manifest);
std::string ManifestId(const ModelManifest& manifest);

// The manifest of the model at `model_path`: every regular file under a
// folder (following symbolic links, skipping names that start with '.'),
// or the one file `model_path` names. Reads and hashes every byte once.
// Errors name the path; InvalidArgument for a block_size out of bounds.
StatusOr<ModelManifest> BuildManifest(const std::string& model_path,
                                      uint64_t block_size);

// Checks a manifest that came from elsewhere (the network, `what` names
// it): every bound above, paths, block counts against sizes, block names,
// files sorted and unique with no file inside another's path, the entry,
// and the id against the content. One error naming the field, the value
// got and the value expected.
Status ValidateManifest(const ModelManifest& manifest, const std::string& what);

}  // namespace delivery
}  // namespace fedpeft

#endif  // FEDPEFT_DELIVERY_MODEL_MANIFEST_H_
