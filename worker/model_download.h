// Base-model delivery over the fedpeft protocol: the gRPC side of
// delivery/model_fetch.h. A worker or executor with model.source upstream
// fetches its base model from server.address before it registers; an edge
// fetches from the cloud through its uplink and serves its workers from
// the same blocks (coordinator/edge.cc).
//
// Also the conversion between proto::ModelManifest and
// delivery::ModelManifest, used by both ends (coordinator/service.cc).
//
// Thread-safety: GrpcBlockRemote is as safe as its FederationClient (any
// thread); the functions are reentrant.
#ifndef FEDPEFT_WORKER_MODEL_DOWNLOAD_H_
#define FEDPEFT_WORKER_MODEL_DOWNLOAD_H_

#include <string>
#include <vector>

#include "common/status.h"
#include "delivery/model_fetch.h"
#include "delivery/model_manifest.h"
#include "proto/fedpeft.pb.h"
#include "worker/federation_client.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace worker {

void ManifestToProto(const delivery::ModelManifest& m,
                     proto::ModelManifest* out);
// As received: the caller validates it (delivery::ValidateManifest).
delivery::ModelManifest ManifestFromProto(const proto::ModelManifest& m);

// A server reached through `client` (which must be connected).
class GrpcBlockRemote final : public delivery::BlockRemote {
 public:
  // REQUIRES: `client` outlives this. `role`: the caller's (the server's
  // certificate must serve it).
  GrpcBlockRemote(FederationClient& client, proto::Role role)
      : client_(client), role_(role) {}

  StatusOr<delivery::ModelManifest> GetManifest() override;
  Status GetBlocks(const std::vector<std::string>& hashes,
                   const OnBlock& on_block) override;

 private:
  FederationClient& client_;
  const proto::Role role_;
};

// model.source upstream for a worker or executor: fetches the model the
// server at `server` delivers into model.cache_dir (what is cached and
// valid is not fetched again) and returns the path to load in place of
// model.path. `id`: the participant (worker.id; with TLS, the certificate's
// name).
StatusOr<std::string> FetchUpstreamModel(const ModelOptions& model,
                                         const ConnectionOptions& server,
                                         const std::string& id);

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_MODEL_DOWNLOAD_H_
