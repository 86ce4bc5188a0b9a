// Assertions shared by the transport tests.
#ifndef FEDPEFT_TESTS_PROTO_TENSOR_TEST_UTIL_H_
#define FEDPEFT_TESTS_PROTO_TENSOR_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/llama.h"

namespace fedpeft {
namespace transport {

// `got` holds exactly `want`'s tensors: same names, dtypes, shapes and
// values, on the CPU.
inline void ExpectSameTensors(const TensorMap& got, const TensorMap& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, t] : want) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << name;
    EXPECT_EQ(it->second.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(it->second.sizes(), t.sizes()) << name;
    EXPECT_TRUE(it->second.device().is_cpu()) << name;
    EXPECT_TRUE(torch::equal(it->second, t.contiguous())) << name;
  }
}

}  // namespace transport
}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_PROTO_TENSOR_TEST_UTIL_H_
