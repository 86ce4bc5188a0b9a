// Small text helpers for error and log messages, shared so that every
// library words shapes, lists and numbers the same way.
//
// Thread-safety: free functions.
#ifndef FEDPEFT_COMMON_TEXT_H_
#define FEDPEFT_COMMON_TEXT_H_

#include <string>
#include <string_view>
#include <vector>

namespace fedpeft {

// "a, b, c" (or joined by `sep`).
std::string Join(const std::vector<std::string>& items,
                 std::string_view sep = ", ");

// A shape as messages print it: "[2, 3]". `Dims` is any range of integers:
// std::vector<int64_t>, torch::IntArrayRef, a protobuf RepeatedField.
template <typename Dims>
std::string ShapeString(const Dims& dims) {
  std::string out = "[";
  bool first = true;
  for (const auto d : dims) {
    if (!first) out += ", ";
    first = false;
    out += std::to_string(d);
  }
  return out + "]";
}

// `s` with every occurrence of `from` (non-empty; searched left to right,
// never in replaced text) replaced by `to`. An empty `from` returns `s`.
std::string ReplaceAll(std::string_view s, std::string_view from,
                       std::string_view to);

bool EndsWith(std::string_view s, std::string_view suffix);

// A number in printf's %g: "0.001", "1e+06", "nan".
std::string FormatG(double x);

}  // namespace fedpeft

#endif  // FEDPEFT_COMMON_TEXT_H_
