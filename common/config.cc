#include "common/config.h"

#include <cmath>
#include <limits>

#include "common/file_util.h"

namespace fedpeft {

Status ApplyOverride(YAML::Node& root, const std::string& assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    return Status::InvalidArgument("--set '" + assignment +
                                   "': expected dotted.key=value");
  }
  std::string key = assignment.substr(0, eq);
  std::string text = assignment.substr(eq + 1);
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    std::string part = key.substr(start, dot - start);
    if (part.empty()) {
      return Status::InvalidArgument("--set '" + assignment +
                                     "': empty component in key '" + key + "'");
    }
    parts.push_back(part);
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  YAML::Node value;
  try {
    value = text.empty() ? YAML::Node(std::string()) : YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return Status::InvalidArgument("--set '" + assignment +
                                   "': value is not valid YAML: " + e.msg);
  }
  if (!root.IsMap()) root = YAML::Node(YAML::NodeType::Map);
  // yaml-cpp nodes are handles: walk with fresh handles so assignment does
  // not rebind parents.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node child = chain.back()[parts[i]];
    if (!child.IsDefined() || child.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      child = chain.back()[parts[i]];
    } else if (!child.IsMap()) {
      return Status::InvalidArgument("--set '" + assignment + "': '" +
                                     parts[i] + "' is not a section");
    }
    chain.push_back(child);
  }
  chain.back()[parts.back()] = value;
  return Status::Ok();
}

StatusOr<YAML::Node> LoadConfigFile(const std::string& path,
                                    const std::vector<std::string>& overrides) {
  std::string text;
  if (!path.empty()) {
    ASSIGN_OR_RETURN(text, ReadFileToString(path, kMaxConfigFileBytes));
  }
  return LoadConfigText(text, path, overrides);
}

StatusOr<YAML::Node> LoadConfigText(const std::string& text,
                                    const std::string& source,
                                    const std::vector<std::string>& overrides) {
  YAML::Node root(YAML::NodeType::Map);
  if (!text.empty()) {
    try {
      root = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
      return Status::InvalidArgument(
          "config '" + source + "' line " + std::to_string(e.mark.line + 1) +
          ", column " + std::to_string(e.mark.column + 1) + ": " + e.msg);
    } catch (const std::exception& e) {  // other YAML::Exception, bad_alloc
      return Status::InvalidArgument("config '" + source +
                                     "': cannot be loaded: " + e.what());
    }
    if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
    if (!root.IsMap()) {
      return Status::InvalidArgument(
          "config '" + source + "': expected a mapping of keys at top level");
    }
  }
  for (const std::string& o : overrides) {
    RETURN_IF_ERROR(ApplyOverride(root, o));
  }
  return root;
}

ConfigReader::ConfigReader(YAML::Node root, std::string source)
    : node_(std::move(root)),
      shared_(std::make_shared<Shared>()),
      source_(std::move(source)) {}

ConfigReader::ConfigReader(YAML::Node node, std::string prefix,
                           std::shared_ptr<Shared> shared, std::string source)
    : node_(std::move(node)),
      prefix_(std::move(prefix)),
      shared_(std::move(shared)),
      source_(std::move(source)) {}

std::string ConfigReader::Path(const std::string& key) const {
  return prefix_ + key;
}

YAML::Node ConfigReader::Lookup(const std::string& key) const {
  const YAML::Node& node = node_;
  if (!node.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  return node[key];
}

bool ConfigReader::Has(const std::string& key) const {
  YAML::Node v = Lookup(key);
  return v && !v.IsNull();
}

ConfigReader ConfigReader::Section(const std::string& key) {
  const std::string path = Path(key);
  shared_->consumed.insert(path);
  YAML::Node child(YAML::NodeType::Map);
  YAML::Node value = Lookup(key);
  if (value && !value.IsNull()) {
    if (value.IsMap()) {
      child = value;
    } else {
      shared_->errors.push_back(
          path + ": expected a section (a mapping), got " + Describe(value));
    }
  }
  return ConfigReader(child, path + ".", shared_, source_);
}

void ConfigReader::Check(bool ok, const std::string& key,
                         const std::string& message) {
  if (!ok) shared_->errors.push_back(Path(key) + ": " + message);
}

void ConfigReader::AddError(const std::string& message) {
  shared_->errors.push_back(message);
}

void ConfigReader::CollectUnknown(const YAML::Node& node,
                                  const std::string& prefix,
                                  std::vector<std::string>* unknown) const {
  if (!node.IsMap()) return;
  for (const auto& kv : node) {
    // A complex key ("? [a, b]\n: 1") names nothing we read; as<string>
    // would throw on it.
    if (!kv.first.IsScalar() && !kv.first.IsNull()) {
      unknown->push_back("key " + Describe(kv.first) + " under '" +
                         (prefix.empty()
                              ? std::string("the top level")
                              : prefix.substr(0, prefix.size() - 1)) +
                         "' (expected a plain name)");
      continue;
    }
    std::string key = kv.first.as<std::string>();
    std::string path = prefix + key;
    if (!shared_->consumed.count(path)) {
      unknown->push_back("unknown key '" + path +
                         "' (check its spelling and section)");
      continue;
    }
    if (kv.second.IsMap() && !shared_->data_maps.count(path)) {
      CollectUnknown(kv.second, path + ".", unknown);
    }
  }
}

Status ConfigReader::Finish() {
  std::vector<std::string> all = shared_->errors;
  std::vector<std::string> unknown;
  CollectUnknown(node_, prefix_, &unknown);
  all.insert(all.end(), unknown.begin(), unknown.end());
  if (all.empty()) return Status::Ok();
  std::string msg = "config";
  if (!source_.empty()) msg += " '" + source_ + "'";
  msg += ": ";
  for (size_t i = 0; i < all.size(); ++i) {
    if (i) msg += "; ";
    msg += all[i];
  }
  return Status::InvalidArgument(msg);
}

std::string ConfigReader::Describe(const YAML::Node& node) {
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "nothing";
}

bool ConfigReader::Convert(const YAML::Node& node, bool* out) {
  if (!node.IsScalar()) return false;
  const std::string& s = node.Scalar();
  if (s == "true" || s == "True" || s == "yes" || s == "on") {
    *out = true;
    return true;
  }
  if (s == "false" || s == "False" || s == "no" || s == "off") {
    *out = false;
    return true;
  }
  return false;
}

namespace {
bool ParseInt64(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  size_t pos = 0;
  try {
    long long v = std::stoll(s, &pos, 10);
    if (pos != s.size()) return false;
    *out = v;
    return true;
  } catch (...) {
    return false;
  }
}
}  // namespace

bool ConfigReader::Convert(const YAML::Node& node, int64_t* out) {
  return node.IsScalar() && ParseInt64(node.Scalar(), out);
}

bool ConfigReader::Convert(const YAML::Node& node, int* out) {
  int64_t v;
  if (!Convert(node, &v)) return false;
  if (v < std::numeric_limits<int>::min() ||
      v > std::numeric_limits<int>::max()) {
    return false;
  }
  *out = static_cast<int>(v);
  return true;
}

bool ConfigReader::Convert(const YAML::Node& node, uint64_t* out) {
  int64_t v;
  if (!Convert(node, &v) || v < 0) return false;
  *out = static_cast<uint64_t>(v);
  return true;
}

bool ConfigReader::Convert(const YAML::Node& node, double* out) {
  if (!node.IsScalar()) return false;
  const std::string& s = node.Scalar();
  if (s.empty()) return false;
  try {
    size_t pos = 0;
    double v = std::stod(s, &pos);
    if (pos != s.size() || !std::isfinite(v)) return false;
    *out = v;
    return true;
  } catch (...) {
    return false;
  }
}

bool ConfigReader::Convert(const YAML::Node& node, std::string* out) {
  if (!node.IsScalar()) return false;
  *out = node.Scalar();
  return true;
}

bool ConfigReader::Convert(const YAML::Node& node,
                           std::vector<std::string>* out) {
  out->clear();
  if (node.IsScalar()) {  // "q_proj,v_proj" is accepted as a list too
    std::string s = node.Scalar();
    size_t start = 0;
    while (start <= s.size()) {
      size_t comma = s.find(',', start);
      std::string item =
          s.substr(start, comma == std::string::npos ? s.npos : comma - start);
      while (!item.empty() && item.front() == ' ') item.erase(item.begin());
      while (!item.empty() && item.back() == ' ') item.pop_back();
      if (!item.empty()) out->push_back(item);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    return true;
  }
  if (!node.IsSequence()) return false;
  for (const auto& item : node) {
    if (!item.IsScalar()) return false;
    out->push_back(item.Scalar());
  }
  return true;
}

bool ConfigReader::Convert(const YAML::Node& node, std::vector<int>* out) {
  out->clear();
  if (!node.IsSequence()) return false;
  for (const auto& item : node) {
    int v;
    if (!Convert(item, &v)) return false;
    out->push_back(v);
  }
  return true;
}

bool ConfigReader::Convert(const YAML::Node& node, std::vector<double>* out) {
  out->clear();
  if (!node.IsSequence()) return false;
  for (const auto& item : node) {
    double v;
    if (!Convert(item, &v)) return false;
    out->push_back(v);
  }
  return true;
}

namespace {
template <typename V>
bool ConvertMap(const YAML::Node& node, std::map<std::string, V>* out,
                bool (*convert)(const YAML::Node&, V*)) {
  out->clear();
  if (!node.IsMap()) return false;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) return false;
    V v;
    if (!convert(kv.second, &v)) return false;
    (*out)[kv.first.Scalar()] = v;
  }
  return true;
}
}  // namespace

bool ConfigReader::Convert(const YAML::Node& node,
                           std::map<std::string, int>* out) {
  return ConvertMap<int>(node, out, &ConfigReader::Convert);
}

bool ConfigReader::Convert(const YAML::Node& node,
                           std::map<std::string, double>* out) {
  return ConvertMap<double>(node, out, &ConfigReader::Convert);
}

bool ConfigReader::Convert(const YAML::Node& node,
                           std::map<std::string, std::string>* out) {
  return ConvertMap<std::string>(node, out, &ConfigReader::Convert);
}

}  // namespace fedpeft
