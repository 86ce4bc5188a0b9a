// Fuzz target: the config loader (LoadConfigText, the in-memory form of
// LoadConfigFile), --set overrides, and a ConfigReader binding a struct that
// uses every type ConfigReader::Get supports.
//
// Input: YAML text; a line that is exactly kSetMarker ends it, and each
// non-empty line after it is one --set override (at most kMaxOverrides).
#include "common/config.h"

#include <map>
#include <string>
#include <vector>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"

namespace fedpeft {
namespace fuzz {
namespace {

constexpr char kSetMarker[] = "#--set";
constexpr size_t kMaxOverrides = 8;

// Keys as the shipped configs spell them, so the seed corpus binds.
struct Lora {
  int r = 8;
  double alpha = 16;
  std::vector<std::string> target_modules;
  std::map<std::string, int> rank_pattern;
  std::map<std::string, double> alpha_pattern;
  void Read(ConfigReader& in) {
    in.Get("r", &r);
    in.Get("alpha", &alpha);
    in.Get("dropout", &alpha);
    in.Get("target_modules", &target_modules);
    in.Get("rank_pattern", &rank_pattern);
    in.Get("alpha_pattern", &alpha_pattern);
    in.Check(r >= 1, "r", "must be >= 1, got " + ToConfigString(r));
  }
};

struct Root {
  bool flag = false;
  int seed = 0;
  int64_t max_steps = 0;
  uint64_t bytes = 0;
  double lr = 0;
  std::string path;
  std::vector<int> ranks;
  std::vector<double> weights;
  Lora lora;
  void Read(ConfigReader& in) {
    in.Get("seed", &seed);
    in.Get("flag", &flag);
    ConfigReader model = in.Section("model");
    model.Require("path", &path);
    model.Get("threads", &seed);
    ConfigReader peft = in.Section("peft");
    peft.Get("method", &path);
    ConfigReader lora_in = peft.Section("lora");
    lora.Read(lora_in);
    ConfigReader train = in.Section("train");
    train.Get("max_steps", &max_steps);
    train.Get("max_bytes", &bytes);
    train.Get("ranks", &ranks);
    train.Get("weights", &weights);
    ConfigReader optim = train.Section("optim");
    optim.Get("lr", &lr);
    optim.Get("schedule", &path);
    in.Check(lr >= 0, "train.optim.lr", "must be >= 0");
  }
};

}  // namespace

int FuzzConfig(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  std::string yaml = input;
  std::vector<std::string> overrides;
  const std::string marker = std::string("\n") + kSetMarker + "\n";
  const size_t at = input.find(marker);
  if (at != std::string::npos) {
    yaml = input.substr(0, at + 1);
    size_t start = at + marker.size();
    while (start < input.size() && overrides.size() < kMaxOverrides) {
      size_t end = input.find('\n', start);
      if (end == std::string::npos) end = input.size();
      if (end > start) overrides.push_back(input.substr(start, end - start));
      start = end + 1;
    }
  }

  // No try: an exception escaping the loader or the reader is a bug.
  StatusOr<YAML::Node> root = LoadConfigText(yaml, "fuzz.yaml", overrides);
  if (!root.ok()) {
    FUZZ_CHECK(root.status().code() == StatusCode::kInvalidArgument,
               root.status().ToString());
    return 0;
  }
  FUZZ_CHECK(root->IsMap(), "the loader returned a non-map root");
  ConfigReader in(*root, "fuzz.yaml");
  Root cfg;
  cfg.Read(in);
  Status s = in.Finish();
  FUZZ_CHECK(s.ok() || s.code() == StatusCode::kInvalidArgument, s.ToString());
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
