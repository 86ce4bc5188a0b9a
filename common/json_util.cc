#include "common/json_util.h"

namespace fedpeft {

std::string JsonBrief(const nlohmann::json& j) {
  bool flat = true;
  if (j.is_structured()) {
    for (const nlohmann::json& e : j) flat = flat && e.is_primitive();
  }
  std::string out;
  if (flat) {
    out = j.dump();
  } else {
    out = std::string(j.is_array() ? "an array" : "an object") + " of " +
          std::to_string(j.size()) + " nested entries";
  }
  if (out.size() > 64) out = out.substr(0, 61) + "...";
  return out;
}

}  // namespace fedpeft
