#include "model/hf_json.h"

namespace fedpeft {
namespace model {
namespace hf_json {

StatusOr<std::string> Type(const nlohmann::json& spec,
                           const std::string& where) {
  if (!spec.is_object()) {
    return Status::InvalidArgument(where + ": expected an object, got " +
                                   std::string(spec.type_name()));
  }
  auto it = spec.find("type");
  if (it == spec.end() || !it->is_string()) {
    return Status::InvalidArgument(where + ".type: missing or not a string");
  }
  return it->get<std::string>();
}

StatusOr<std::string> String(const nlohmann::json& spec, const char* key,
                             const std::string& where,
                             const std::string& fallback) {
  auto it = spec.find(key);
  if (it == spec.end() || it->is_null()) return fallback;
  if (!it->is_string()) {
    return Status::InvalidArgument(where + "." + key +
                                   ": expected a string, got " +
                                   std::string(it->type_name()));
  }
  return it->get<std::string>();
}

StatusOr<bool> Bool(const nlohmann::json& spec, const char* key,
                    const std::string& where, bool fallback) {
  auto it = spec.find(key);
  if (it == spec.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) {
    return Status::InvalidArgument(where + "." + key +
                                   ": expected true or false, got " +
                                   std::string(it->type_name()));
  }
  return it->get<bool>();
}

StatusOr<int64_t> Int(const nlohmann::json& spec, const char* key,
                      const std::string& where, int64_t fallback) {
  auto it = spec.find(key);
  if (it == spec.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) {
    return Status::InvalidArgument(where + "." + key +
                                   ": expected an integer, got " +
                                   std::string(it->type_name()));
  }
  return it->get<int64_t>();
}

StatusOr<const nlohmann::json*> Array(const nlohmann::json& spec,
                                      const char* key,
                                      const std::string& where) {
  auto it = spec.find(key);
  if (it == spec.end() || !it->is_array()) {
    return Status::InvalidArgument(where + "." + key +
                                   ": missing or not an array");
  }
  return &*it;
}

Status Unsupported(const std::string& where, const std::string& type,
                   const std::vector<std::string>& supported) {
  std::string list;
  for (const std::string& s : supported) {
    list += (list.empty() ? "" : ", ") + s;
  }
  return Status::Unimplemented(where + ".type \"" + type +
                               "\" is not supported (supported: " + list + ")");
}

Status Pattern(const nlohmann::json& component,
               const std::string& component_where, bool* is_regex,
               std::string* text) {
  const std::string where = component_where + ".pattern";
  auto found = component.find("pattern");
  if (found == component.end()) {
    return Status::InvalidArgument(where + ": missing");
  }
  const nlohmann::json& spec = *found;
  if (spec.is_object() && spec.size() == 1) {
    auto s = spec.find("String");
    if (s != spec.end() && s->is_string()) {
      *is_regex = false;
      *text = s->get<std::string>();
      return Status::Ok();
    }
    auto r = spec.find("Regex");
    if (r != spec.end() && r->is_string()) {
      *is_regex = true;
      *text = r->get<std::string>();
      return Status::Ok();
    }
  }
  return Status::InvalidArgument(where +
                                 ": expected {\"String\": ...} or "
                                 "{\"Regex\": ...}");
}

}  // namespace hf_json
}  // namespace model
}  // namespace fedpeft
