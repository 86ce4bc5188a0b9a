// Fuzz target: `fedpeft simulate`'s config through its real loader
// (cli::LoadSimulationConfig, a scratch file: it reads a path), then what
// simulate would start from it through the loaders of those processes: the
// coordinator's config, the edges' and the workers' (executors' with
// virtual users), each with the --set overrides simulate gives it. A config
// simulate accepts must start every process it names; one it refuses gets
// one InvalidArgument.
//
// Input: YAML text and --set overrides (fuzz_util.h, SplitConfigInput).
#include "cli/simulate_config.h"

#include <algorithm>
#include <string>
#include <vector>

#include "coordinator/coordinator_config.h"
#include "coordinator/edge_config.h"
#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace fuzz {

int FuzzSimulateConfig(const uint8_t* data, size_t size) {
  // Removed at exit.
  static ScratchFile file("-simulate.yaml");
  static ScratchFile written("-simulate-section.yaml");
  InputReader in(data, size);
  const ConfigInput input = SplitConfigInput(in.Rest());
  file.Write(input.yaml);

  // No try: an exception escaping a loader is a bug. Nothing is written
  // under the output folder by loading.
  auto config = cli::LoadSimulationConfig(file.path(), input.overrides,
                                          "/nonexistent/fedpeft-fuzz-out");
  if (!config.ok()) {
    const Status& s = config.status();
    FUZZ_CHECK(s.code() == StatusCode::kInvalidArgument, s.ToString());
    FUZZ_CHECK(!s.message().empty(), "error without a message");
    return 0;
  }
  const cli::SimulationOptions& sim = config->sim;
  const std::string& certs = config->paths.certs;
  written.Write(cli::ToYaml(config->coordinator));
  Status s = coordinator::LoadCoordinatorConfig(written.path(), {}).status();
  FUZZ_CHECK(s.ok(), "simulate accepted a coordinator it cannot start: " +
                         s.ToString());
  // Edges differ in their count of users, workers in the values they take
  // from simulation's per-worker lists (cycled): the first and last edge,
  // and the workers up to the longest list, cover every value used.
  for (int e : {0, sim.edges - 1}) {
    if (sim.edges == 0) break;
    written.Write(cli::ToYaml(config->edge));
    s = coordinator::LoadEdgeConfig(
            written.path(),
            cli::EdgeOverrides(sim, e, "127.0.0.1:2", "edge.port", certs))
            .status();
    FUZZ_CHECK(s.ok(),
               "simulate accepted an edge it cannot start: " + s.ToString());
  }
  written.Write(cli::ToYaml(config->worker));
  if (sim.virtual_users()) {
    for (int e : {0, sim.executors - 1}) {
      s = worker::LoadWorkerConfig(
              written.path(),
              cli::ExecutorOverrides(sim, e, "127.0.0.1:2", certs))
              .status();
      FUZZ_CHECK(s.ok(), "simulate accepted an executor it cannot start: " +
                             s.ToString());
    }
    return 0;
  }
  const size_t lists = std::max({sim.slowdown.size(), sim.dropout_prob.size(),
                                 sim.ram_mb.size(), sim.uplink_mbps.size()});
  const int workers =
      static_cast<int>(std::min(lists, static_cast<size_t>(sim.workers)));
  for (int i = 0; i < workers; ++i) {
    s = worker::LoadWorkerConfig(
            written.path(), cli::WorkerOverrides(sim, i, "127.0.0.1:2", certs))
            .status();
    FUZZ_CHECK(s.ok(),
               "simulate accepted a worker it cannot start: " + s.ToString());
  }
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
