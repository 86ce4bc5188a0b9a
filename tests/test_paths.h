// Where the tests find the shipped model, data and fixtures: the source
// tree, FEDPEFT_SOURCE_DIR (set by tests/CMakeLists.txt).
#ifndef FEDPEFT_TESTS_TEST_PATHS_H_
#define FEDPEFT_TESTS_TEST_PATHS_H_

#include <string>

namespace fedpeft {

inline const std::string kSource = FEDPEFT_SOURCE_DIR;
// The shipped model (Hugging Face layout) and tiny-shakespeare.
inline const std::string kModel = kSource + "/assets/stories260K";
inline const std::string kShakespeare =
    kSource + "/assets/data/tinyshakespeare/input.txt";

}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_TEST_PATHS_H_
