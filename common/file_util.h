// Small filesystem helpers with Status errors that name the path.
//
// Thread-safety: free functions, no shared state.
#ifndef FEDPEFT_COMMON_FILE_UTIL_H_
#define FEDPEFT_COMMON_FILE_UTIL_H_

#include <cstdint>
#include <string>

#include "common/status.h"

namespace fedpeft {

// Cap of ReadFileToString when the caller names none. Readers of files
// from outside pass the cap of their kind instead (kMaxConfigFileBytes,
// kMaxPemFileBytes, model::kMaxTokenizerFileBytes, ...); files too big to
// hold in memory (model weights) are mapped, not read (model::MappedFile).
inline constexpr uint64_t kDefaultMaxFileBytes = 1ull << 30;  // 1 GiB

// Opens a regular file for reading (close-on-exec) and sets *size. Never
// blocks on a FIFO. NotFound/IoError naming `path`; InvalidArgument for a
// directory, a FIFO, a socket or a device. The caller closes the descriptor.
StatusOr<int> OpenRegularFile(const std::string& path, uint64_t* size);

// Reads a whole regular file. Fails with NotFound/IoError naming `path`;
// InvalidArgument for a directory, a FIFO or a device (never blocks on a
// FIFO), and for a file larger than `max_bytes` -- naming the path, its size
// and the limit -- before anything is allocated.
StatusOr<std::string> ReadFileToString(
    const std::string& path, uint64_t max_bytes = kDefaultMaxFileBytes);

// Writes `data` to `path` atomically: a temp file beside it, fsync, rename,
// fsync of the directory. Readers see the old or the new file, never a torn
// one; a crash leaves at most a stray "<path>.tmp.*". The file is created
// with `mode` (less the umask) before any byte is written, so a secret never
// sits in a more readable file, not even the temp file: 0600 for keys.
Status WriteFileAtomic(const std::string& path, const std::string& data,
                       unsigned mode = 0644);

// Creates `dir` and its parents if absent.
Status EnsureDirectory(const std::string& dir);

bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);

// "a/b" + "c" -> "a/b/c".
std::string JoinPath(const std::string& a, const std::string& b);

}  // namespace fedpeft

#endif  // FEDPEFT_COMMON_FILE_UTIL_H_
