// Helpers shared by the fuzz targets and the seed-corpus generator: the
// framing of structured inputs, the adapter the upload target expects, a
// per-process temp file, and FUZZ_CHECK.
//
// Thread-safety: ScratchFile is used by one thread; the rest is reentrant.
#ifndef FEDPEFT_FUZZ_FUZZ_UTIL_H_
#define FEDPEFT_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "proto/tensor_codec.h"

// Aborts with the condition and a message when a promise of the code under
// test is broken: libFuzzer records the input as a crash, the replay test
// dies naming it.
#define FUZZ_CHECK(cond, msg)                                              \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: FUZZ_CHECK(%s) failed: %s\n", __FILE__, \
                   __LINE__, #cond, std::string(msg).c_str());             \
      std::abort();                                                        \
    }                                                                      \
  } while (0)

namespace fedpeft {
namespace fuzz {

// Bytes a frame's length prefix takes (little-endian): frames of up to
// 16 MiB, more than any input the fuzzers make.
inline constexpr size_t kFrameLengthBytes = 3;

// Reads an input front to back. Past the end every read yields zeros or an
// empty frame, so a target needs no bounds checks of its own.
class InputReader {
 public:
  InputReader(const uint8_t* data, size_t size)
      : data_(reinterpret_cast<const char*>(data)), size_(size) {}

  bool done() const { return pos_ >= size_; }
  uint8_t Byte();
  uint16_t U16();  // little-endian
  // The next frame: a kFrameLengthBytes length, then that many bytes (fewer
  // when the input ends first).
  std::string_view Frame();
  // Everything not read yet.
  std::string_view Rest();

 private:
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Appends `bytes` as one frame. REQUIRES: bytes.size() < 2^24.
void AppendFrame(std::string_view bytes, std::string* out);

// The input of the config targets: YAML text; a line that is exactly
// "#--set" ends it, and each non-empty line after that is one --set
// override (at most kMaxConfigOverrides; the rest are ignored).
inline constexpr size_t kMaxConfigOverrides = 8;
struct ConfigInput {
  std::string yaml;
  std::vector<std::string> overrides;
};
ConfigInput SplitConfigInput(std::string_view input);

// The adapter the tensor_stream target expects: a rank-4 LoRA on q_proj and
// v_proj of a 2-layer model of width 16, F32, PEFT key names.
std::map<std::string, transport::TensorSpec> FuzzAdapterSpecs();

// A file in /dev/shm (or $TMPDIR) named fedpeft-fuzz-<pid><suffix>, rewritten
// by every Write and removed on destruction.
class ScratchFile {
 public:
  explicit ScratchFile(const std::string& suffix);
  ~ScratchFile();
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  // Replaces the file's contents; aborts when it cannot (the fuzzer's
  // environment is broken, not the code under test).
  void Write(std::string_view bytes);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace fuzz
}  // namespace fedpeft

#endif  // FEDPEFT_FUZZ_FUZZ_UTIL_H_
