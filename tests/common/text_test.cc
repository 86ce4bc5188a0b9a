// common/text.h: the shared message helpers.
#include "common/text.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace fedpeft {
namespace {

TEST(TextTest, JoinShapeAndNumbers) {
  EXPECT_EQ(Join({}), "");
  EXPECT_EQ(Join({"a"}), "a");
  EXPECT_EQ(Join({"a", "b", "c"}), "a, b, c");
  EXPECT_EQ(Join({"a", "b"}, "|"), "a|b");
  EXPECT_EQ(ShapeString(std::vector<int64_t>{}), "[]");
  EXPECT_EQ(ShapeString(std::vector<int64_t>{8, 4096}), "[8, 4096]");
  EXPECT_EQ(ShapeString(std::vector<int>{-1}), "[-1]");
  EXPECT_EQ(FormatG(0.001), "0.001");
  EXPECT_EQ(FormatG(1e6), "1e+06");
  EXPECT_EQ(FormatG(std::nan("")), "nan");
}

TEST(TextTest, ReplaceAllAndEndsWith) {
  EXPECT_EQ(ReplaceAll("a_b_c", "_", " "), "a b c");
  // Left to right, never inside replaced text.
  EXPECT_EQ(ReplaceAll("aaa", "a", "aa"), "aaaaaa");
  EXPECT_EQ(ReplaceAll("aaaa", "aa", "b"), "bb");
  EXPECT_EQ(ReplaceAll("abc", "", "x"), "abc");  // empty `from`: unchanged
  EXPECT_EQ(ReplaceAll("\xe2\x96\x81hi", "\xe2\x96\x81", " "), " hi");
  EXPECT_TRUE(EndsWith("model.gguf", ".gguf"));
  EXPECT_TRUE(EndsWith("x", ""));
  EXPECT_FALSE(EndsWith("gguf", ".gguf"));
}

}  // namespace
}  // namespace fedpeft
