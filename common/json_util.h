// JSON values in error messages, safely: the JSON decoders of hostile files
// (safetensors headers, config.json, adapter_config.json) quote what they
// refused with JsonBrief, never with nlohmann's dump().
//
// Thread-safety: free functions.
#ifndef FEDPEFT_COMMON_JSON_UTIL_H_
#define FEDPEFT_COMMON_JSON_UTIL_H_

#include <nlohmann/json.hpp>
#include <string>

namespace fedpeft {

// A JSON value as error messages show it: a scalar, or an array or object
// of scalars, as written (cut at 64 characters); anything nested by its type
// and size ("an array of 3 nested entries"). Never a full dump(): dump()
// recurses once per nesting level, and a hostile file nested a million deep
// would overflow the stack.
std::string JsonBrief(const nlohmann::json& j);

}  // namespace fedpeft

#endif  // FEDPEFT_COMMON_JSON_UTIL_H_
