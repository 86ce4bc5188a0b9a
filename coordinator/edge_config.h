// The edge aggregator's config (`fedpeft edge --config FILE`): its YAML
// binding alone, apart from the edge's gRPC server (edge.h), so that the
// fuzz build, which compiles no gRPC service, fuzzes it too
// (fuzz/app_config.cc).
#ifndef FEDPEFT_COORDINATOR_EDGE_CONFIG_H_
#define FEDPEFT_COORDINATOR_EDGE_CONFIG_H_

#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"
#include "coordinator/coordinator_config.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace coordinator {

struct EdgeConfig {
  std::string id = "edge-0";           // edge.id: its name at the cloud
                                       // (with TLS: its certificate's name)
  worker::ConnectionOptions upstream;  // the cloud coordinator
  ServerOptions server;                // where its workers connect
  // The `tls` section sets both server.tls and upstream.tls: one
  // certificate (role edge: serverAuth and clientAuth) for both sides.
  FederationOptions rounds;    // `federation`: edge-round options
  worker::ModelOptions model;  // the base model (shapes, init)
  CoordinatorLogging logging;
  int max_update_mb = 256;

  void Read(ConfigReader& in);
};

// Loads and checks an edge config file with --set overrides; an error names
// the file and the key.
StatusOr<EdgeConfig> LoadEdgeConfig(const std::string& path,
                                    const std::vector<std::string>& overrides);

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_EDGE_CONFIG_H_
