// YAML configuration: loading, `--set dotted.key=value` overrides, and a
// reader that binds keys to plain structs while gathering every error.
//
// Every config struct follows one pattern (see e.g. worker/train_config.h):
//
//   struct LoraOptions {
//     int r = 8;  // rank of every adapted module
//     ...
//     void Read(ConfigReader& in);  // binds keys, checks ranges
//   };
//
//   ASSIGN_OR_RETURN(TrainConfig cfg,
//                    LoadConfigAs<TrainConfig>(path, overrides));
//
// which is LoadConfigFile, a ConfigReader over it, cfg.Read(in), and
// in.Finish(): all errors at once, unknown keys too.
//
// Errors carry the full key path and the file:
//   config 'configs/local_train.yaml': lora.r: must be >= 1, got 0;
//   train.lr: expected a number, got 'fast'; unknown key 'lora.rnak'
//
// Precedence: CLI --set > YAML file > struct defaults.
//
// Thread-safety: a ConfigReader is used by one thread.
#ifndef FEDPEFT_COMMON_CONFIG_H_
#define FEDPEFT_COMMON_CONFIG_H_

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedpeft {

// Parses "a.b.c=value" and sets root[a][b][c] = value, where value is parsed
// as YAML (so "[q_proj, v_proj]" is a list and "3" an integer).
Status ApplyOverride(YAML::Node& root, const std::string& assignment);

// Largest config file read: YAML configs and allowlists, and the JSON
// configs of models and adapters (config.json, model.safetensors.index.json,
// adapter_config.json). The largest real ones are ~100 KB (the shard index
// of a 405B model); yaml-cpp's node tree costs tens of bytes per input byte,
// so 16 MiB is generous headroom and still a bounded cost.
inline constexpr uint64_t kMaxConfigFileBytes = 16ull << 20;

// Loads `path` (an empty path gives an empty map) and applies `overrides`.
// A file larger than kMaxConfigFileBytes is refused unread.
StatusOr<YAML::Node> LoadConfigFile(const std::string& path,
                                    const std::vector<std::string>& overrides);

// As LoadConfigFile, for YAML already in memory; `source` names it in
// messages (e.g. the file it came from). Empty text gives an empty map.
StatusOr<YAML::Node> LoadConfigText(const std::string& text,
                                    const std::string& source,
                                    const std::vector<std::string>& overrides);

// One out-of-range option found by a config struct's range check: its key
// (relative to the struct's section) and what is wrong with its value.
struct OptionProblem {
  std::string key;
  std::string message;
};

class ConfigReader {
 public:
  // `source` names the file in messages.
  ConfigReader(YAML::Node root, std::string source);

  // Child reader for the mapping at `key` (an absent key reads as an empty
  // map, so every default applies). Shares this reader's error list.
  ConfigReader Section(const std::string& key);

  // Binds an optional key: leaves *out untouched when absent, records an
  // error naming the key when the value has the wrong type.
  // T: bool, int, int64_t, uint64_t, double, std::string,
  //    std::vector<std::string>, std::vector<int>, std::vector<double>,
  //    std::map<std::string, int>, std::map<std::string, double>,
  //    std::map<std::string, std::string> (a mapping
  //    whose keys are data, e.g. lora.rank_pattern; they are not checked as
  //    config keys).
  template <typename T>
  void Get(const std::string& key, T* out);

  // As Get, and records "missing required key" when absent.
  template <typename T>
  void Require(const std::string& key, T* out);

  bool Has(const std::string& key) const;

  // Records an error at `key` (relative to this section) unless `ok`.
  void Check(bool ok, const std::string& key, const std::string& message);

  // Records a free-form error.
  void AddError(const std::string& message);

  // Full dotted path of `key` under this section.
  std::string Path(const std::string& key) const;

  // OK, or one InvalidArgument listing every error and every unknown key.
  // Call on the root reader after all Read()s.
  Status Finish();

 private:
  struct Shared {
    std::vector<std::string> errors;
    std::set<std::string> consumed;   // full paths that were read
    std::set<std::string> data_maps;  // consumed maps whose keys are data
  };
  ConfigReader(YAML::Node node, std::string prefix,
               std::shared_ptr<Shared> shared, std::string source);

  static bool Convert(const YAML::Node& node, bool* out);
  static bool Convert(const YAML::Node& node, int* out);
  static bool Convert(const YAML::Node& node, int64_t* out);
  static bool Convert(const YAML::Node& node, uint64_t* out);
  static bool Convert(const YAML::Node& node, double* out);
  static bool Convert(const YAML::Node& node, std::string* out);
  static bool Convert(const YAML::Node& node, std::vector<std::string>* out);
  static bool Convert(const YAML::Node& node, std::vector<int>* out);
  static bool Convert(const YAML::Node& node, std::vector<double>* out);
  static bool Convert(const YAML::Node& node, std::map<std::string, int>* out);
  static bool Convert(const YAML::Node& node,
                      std::map<std::string, double>* out);
  static bool Convert(const YAML::Node& node,
                      std::map<std::string, std::string>* out);
  static const char* TypeName(const bool*) { return "a boolean"; }
  static const char* TypeName(const int*) { return "an integer"; }
  static const char* TypeName(const int64_t*) { return "an integer"; }
  static const char* TypeName(const uint64_t*) {
    return "a non-negative integer";
  }
  static const char* TypeName(const double*) { return "a number"; }
  static const char* TypeName(const std::string*) { return "a string"; }
  static const char* TypeName(const std::vector<std::string>*) {
    return "a list of strings";
  }
  static const char* TypeName(const std::vector<int>*) {
    return "a list of integers";
  }
  static const char* TypeName(const std::vector<double>*) {
    return "a list of numbers";
  }
  static const char* TypeName(const std::map<std::string, int>*) {
    return "a mapping of names to integers";
  }
  static const char* TypeName(const std::map<std::string, double>*) {
    return "a mapping of names to numbers";
  }
  static const char* TypeName(const std::map<std::string, std::string>*) {
    return "a mapping of names to strings";
  }
  template <typename T>
  static constexpr bool IsDataMap(const T*) {
    return false;
  }
  template <typename V>
  static constexpr bool IsDataMap(const std::map<std::string, V>*) {
    return true;
  }
  static std::string Describe(const YAML::Node& node);
  // Appends an error for every key under `node` that no Get/Section read.
  void CollectUnknown(const YAML::Node& node, const std::string& prefix,
                      std::vector<std::string>* unknown) const;

  // The value at `key`, or an invalid node. Always through a const handle:
  // yaml-cpp's non-const operator[] inserts the key, leaving zombie entries
  // that crash later iteration.
  YAML::Node Lookup(const std::string& key) const;

  YAML::Node node_;
  std::string prefix_;  // "" at the root, "lora." below
  std::shared_ptr<Shared> shared_;
  std::string source_;
};

template <typename T>
void ConfigReader::Get(const std::string& key, T* out) {
  const std::string path = Path(key);
  shared_->consumed.insert(path);
  if (IsDataMap(out)) shared_->data_maps.insert(path);
  YAML::Node value = Lookup(key);
  if (!value) return;
  if (value.IsNull()) return;
  T parsed{};
  if (!Convert(value, &parsed)) {
    shared_->errors.push_back(path + ": expected " + TypeName(out) + ", got " +
                              Describe(value));
    return;
  }
  *out = std::move(parsed);
}

template <typename T>
void ConfigReader::Require(const std::string& key, T* out) {
  if (!Has(key)) {
    shared_->consumed.insert(Path(key));
    shared_->errors.push_back(Path(key) + ": missing required key (expected " +
                              TypeName(out) + ")");
    return;
  }
  Get(key, out);
}

// Loads `path` with `overrides` into a T (a config struct with
// Read(ConfigReader&)); every error at once, unknown keys too.
template <typename T>
StatusOr<T> LoadConfigAs(const std::string& path,
                         const std::vector<std::string>& overrides) {
  ASSIGN_OR_RETURN(YAML::Node root, LoadConfigFile(path, overrides));
  ConfigReader in(root, path);
  T config;
  config.Read(in);
  RETURN_IF_ERROR(in.Finish());
  return config;
}

// Formats a value for "got X" in messages.
template <typename T>
std::string ToConfigString(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

}  // namespace fedpeft

#endif  // FEDPEFT_COMMON_CONFIG_H_
