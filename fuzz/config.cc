// Fuzz target: the config loader (LoadConfigText, the in-memory form of
// LoadConfigFile), --set overrides, and a ConfigReader binding a struct that
// uses every type ConfigReader::Get supports.
//
// Input: YAML text, then --set overrides (fuzz_util.h, SplitConfigInput).
#include "common/config.h"

#include <map>
#include <string>
#include <vector>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"

namespace fedpeft {
namespace fuzz {
namespace {

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
  const ConfigInput input = SplitConfigInput(
      std::string_view(reinterpret_cast<const char*>(data), size));

  // No try: an exception escaping the loader or the reader is a bug.
  StatusOr<YAML::Node> root =
      LoadConfigText(input.yaml, "fuzz.yaml", input.overrides);
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
