// Small typed accessors for the tokenizer.json reader: each names the key
// path in its error, so a bad file gets one message saying where.
//
// Thread-safety: pure functions, reentrant.
#ifndef FEDPEFT_MODEL_HF_JSON_H_
#define FEDPEFT_MODEL_HF_JSON_H_

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {
namespace model {
namespace hf_json {

// spec["type"] as a string; InvalidArgument "<where>.type: missing" etc.
StatusOr<std::string> Type(const nlohmann::json& spec,
                           const std::string& where);

// spec[key] as a string; `fallback` when absent or null.
StatusOr<std::string> String(const nlohmann::json& spec, const char* key,
                             const std::string& where,
                             const std::string& fallback = "");

// spec[key] as a bool; `fallback` when absent or null.
StatusOr<bool> Bool(const nlohmann::json& spec, const char* key,
                    const std::string& where, bool fallback);

// spec[key] as an integer; `fallback` when absent or null.
StatusOr<int64_t> Int(const nlohmann::json& spec, const char* key,
                      const std::string& where, int64_t fallback);

// spec[key] as an array (possibly empty); error when absent or not one.
StatusOr<const nlohmann::json*> Array(const nlohmann::json& spec,
                                      const char* key,
                                      const std::string& where);

// Unimplemented: `<where>.type "<type>" is not supported (supported: ...)`.
Status Unsupported(const std::string& where, const std::string& type,
                   const std::vector<std::string>& supported);

// The component's required "pattern" key, {"String": s} or {"Regex": r}:
// sets *is_regex and *text. Errors name `where`.pattern.
Status Pattern(const nlohmann::json& spec, const std::string& where,
               bool* is_regex, std::string* text);

}  // namespace hf_json
}  // namespace model
}  // namespace fedpeft

#endif  // FEDPEFT_MODEL_HF_JSON_H_
