// libFuzzer's entry point for one target: fuzz/CMakeLists.txt compiles this
// file once per fuzz_<name> executable with FEDPEFT_FUZZ_TARGET set to the
// target's function (see fuzz/fuzz_targets.h).
#include "fuzz/fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return fedpeft::fuzz::FEDPEFT_FUZZ_TARGET(data, size);
}
