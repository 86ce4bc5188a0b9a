// Fuzz target: a PEFT adapter_config.json as peft::AdapterConfigFromJson
// reads it (LoadAdapter on a file; workers and edges on the coordinator's
// registration reply), and what parses through an AdapterConfigToJson
// round trip.
//
// Input: the file.
#include <algorithm>
#include <string>
#include <vector>

#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"
#include "peft/peft_io.h"
#include "peft/peft_model.h"

namespace fedpeft {
namespace fuzz {
namespace {

bool SameOptions(const peft::PeftOptions& a, const peft::PeftOptions& b) {
  if (a.method != b.method) return false;
  if (a.method == "bottleneck") {
    const peft::BottleneckOptions &x = a.bottleneck, &y = b.bottleneck;
    return x.bottleneck_dim == y.bottleneck_dim && x.places == y.places &&
           x.activation == y.activation &&
           x.layers_to_transform == y.layers_to_transform;
  }
  const peft::LoraOptions &x = a.lora, &y = b.lora;
  return x.r == y.r && x.alpha == y.alpha && x.dropout == y.dropout &&
         x.target_modules == y.target_modules &&
         x.layers_to_transform == y.layers_to_transform &&
         x.rank_pattern == y.rank_pattern &&
         x.alpha_pattern == y.alpha_pattern && x.use_rslora == y.use_rslora;
}

}  // namespace

int FuzzAdapterConfig(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  StatusOr<peft::PeftOptions> options =
      peft::AdapterConfigFromJson(text, "adapter_config.json");
  if (!options.ok()) {
    FUZZ_CHECK(options.status().code() == StatusCode::kInvalidArgument ||
                   options.status().code() == StatusCode::kUnimplemented,
               options.status().ToString());
    FUZZ_CHECK(!options.status().message().empty(), "error without a message");
    return 0;
  }
  // The options PeftModel::Create is handed: valid as the YAML path checks
  // them.
  const Status valid = peft::ValidatePeftOptions(*options);
  FUZZ_CHECK(valid.ok(), valid.ToString());

  // The coordinator sends AdapterConfigToJson(); a worker must read back
  // the same options. (Duplicate target modules are written once.)
  peft::PeftOptions expected = *options;
  std::vector<std::string> unique;
  for (const std::string& m : expected.lora.target_modules) {
    if (std::find(unique.begin(), unique.end(), m) == unique.end()) {
      unique.push_back(m);
    }
  }
  expected.lora.target_modules = unique;
  const std::string written =
      peft::AdapterConfigToJson(*options, "base").dump(2);
  StatusOr<peft::PeftOptions> again =
      peft::AdapterConfigFromJson(written, "written adapter_config.json");
  FUZZ_CHECK(again.ok(), "AdapterConfigToJson() does not parse: " +
                             again.status().ToString() + "\n" + written);
  FUZZ_CHECK(SameOptions(expected, *again),
             "the round trip changed the options:\n" + written);
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
