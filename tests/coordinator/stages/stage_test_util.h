// Shared pieces of the round-stage unit tests (tests/coordinator/stages/):
// a config built from `key=value` overrides, small hand-made adapters with
// PEFT key names, and participants registered in a Registry the test owns.
// No gRPC: the tests call the stages' methods directly, as the round engine
// would, with a RoundContext they build themselves.
#ifndef FEDPEFT_TESTS_COORDINATOR_STAGES_STAGE_TEST_UTIL_H_
#define FEDPEFT_TESTS_COORDINATOR_STAGES_STAGE_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "coordinator/coordinator_config.h"
#include "coordinator/registry.h"
#include "coordinator/round_types.h"

namespace fedpeft {
namespace coordinator {
namespace stage_test {

const std::string kQ = "base_model.model.model.layers.0.self_attn.q_proj";
const std::string kV = "base_model.model.model.layers.0.self_attn.v_proj";
inline std::string AKey(const std::string& module) {
  return module + ".lora_A.weight";
}
inline std::string BKey(const std::string& module) {
  return module + ".lora_B.weight";
}

// A coordinator config from the defaults plus `overrides`. The model path
// is only a name here: no stage loads the model.
inline CoordinatorConfig Config(const std::vector<std::string>& overrides) {
  std::vector<std::string> all = {
      "tls.insecure=true",
      "model.path=" + std::string(FEDPEFT_SOURCE_DIR) + "/assets/stories260K",
      "federation.id=stage-test",
  };
  all.insert(all.end(), overrides.begin(), overrides.end());
  StatusOr<CoordinatorConfig> config = LoadCoordinatorConfig("", all);
  EXPECT_TRUE(config.ok()) << config.status().ToString();
  return config.ok() ? *config : CoordinatorConfig{};
}

// q_proj and v_proj of one layer at `rank` (A [rank, in], B [out, rank]),
// every element `fill`.
inline TensorMap Adapter(int64_t rank, int64_t out = 6, int64_t in = 5,
                         float fill = 0) {
  TensorMap t;
  for (const std::string& m : {kQ, kV}) {
    t[AKey(m)] = torch::full({rank, in}, fill);
    t[BKey(m)] = torch::full({out, rank}, fill);
  }
  return t;
}

inline WorkerProfile Profile(const std::string& id, bool edge = false) {
  WorkerProfile p;
  p.worker_id = id;
  p.num_samples = 10;
  p.edge = edge;
  return p;
}

// Registers `id` with `registry` (a fresh session).
inline Participant& Join(Registry* registry, const std::string& id,
                         bool edge = false) {
  bool rejoin = false;
  return registry->Open(Profile(id, edge), &rejoin);
}

// max |a - b| over the elements, in double.
inline double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64))
      .abs()
      .max()
      .item<double>();
}

}  // namespace stage_test
}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_TESTS_COORDINATOR_STAGES_STAGE_TEST_UTIL_H_
