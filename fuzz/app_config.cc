// Fuzz target: the YAML configs of the fedpeft commands through their real
// loaders (a scratch file: the loaders read paths) with --set overrides:
// coordinator::LoadCoordinatorConfig (`fedpeft coordinator`, `simulate`),
// worker::LoadWorkerConfig (`fedpeft worker`), worker::LoadTrainJobConfig
// (`fedpeft train`), security::ReadAllowlistFile (tls.allowlist_file,
// which the servers re-read while running), coordinator::LoadEdgeConfig
// (`fedpeft edge`) and serve::LoadServeConfig (`fedpeft serve`, also a
// pipeline's head and stages).
//
// Input: a byte choosing the loader (value % 6: 0 coordinator, 1 worker,
// 2 train job, 3 allowlist, 4 edge, 5 serve; the seeds use the digits '0'
// to '5', which are 0 to 5 modulo 6, and a newline), then YAML text and
// --set overrides (fuzz_util.h, SplitConfigInput; the allowlist takes
// none).
#include <string>
#include <vector>

#include "coordinator/coordinator_config.h"
#include "coordinator/edge_config.h"
#include "fuzz/fuzz_targets.h"
#include "fuzz/fuzz_util.h"
#include "security/tls.h"
#include "serve/serve_config.h"
#include "worker/train_config.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace fuzz {

int FuzzAppConfig(const uint8_t* data, size_t size) {
  // Removed at exit.
  static ScratchFile file("-config.yaml");
  InputReader in(data, size);
  const int loader = in.Byte() % 6;
  const ConfigInput input = SplitConfigInput(in.Rest());
  file.Write(input.yaml);

  // No try: an exception escaping a loader is a bug.
  Status s;
  switch (loader) {
    case 0:
      s = coordinator::LoadCoordinatorConfig(file.path(), input.overrides)
              .status();
      break;
    case 1:
      s = worker::LoadWorkerConfig(file.path(), input.overrides).status();
      break;
    case 2:
      s = worker::LoadTrainJobConfig(file.path(), input.overrides).status();
      break;
    case 3:
      s = security::ReadAllowlistFile(file.path()).status();
      break;
    case 4:
      s = coordinator::LoadEdgeConfig(file.path(), input.overrides).status();
      break;
    default:
      s = serve::LoadServeConfig(file.path(), input.overrides).status();
      break;
  }
  if (!s.ok()) {
    FUZZ_CHECK(s.code() == StatusCode::kInvalidArgument, s.ToString());
    FUZZ_CHECK(!s.message().empty(), "error without a message");
  }
  return 0;
}

}  // namespace fuzz
}  // namespace fedpeft
