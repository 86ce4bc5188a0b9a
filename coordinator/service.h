// The gRPC face of the coordinator: the Federation service (see
// proto/fedpeft.proto) over a round engine (the cloud's or an edge's), and
// the server that hosts it.
//
// Handlers only move bytes: they decode and validate messages, call the
// engine's thread-safe handlers and encode the reply. An upload is
// checked against the round before its tensors are read, decoded against
// the global adapter's names and shapes with size limits, then handed over.
// No exception leaves a handler; every failure is a gRPC status whose
// message says what was wrong.
//
// Identity (with tls.enabled; security/tls.h): every call must carry a
// client certificate the CA signed, whose common name the allowlist admits
// (else PERMISSION_DENIED, the caller's session is closed and an open round
// goes on without it). Register takes that name as the participant id: a
// profile worker_id that differs is PERMISSION_DENIED, naming both; and the
// role the certificate carries as the participant's role: a worker
// certificate registering as an edge (or an operator's registering at all)
// is PERMISSION_DENIED, naming both roles. GetStatus needs an operator
// certificate. Every
// later call on a session must come from the certificate name the session
// was opened with, so a session id alone is worth nothing. A plaintext
// server (tls.insecure) trusts the profile's worker_id.
//
// Base-model delivery (GetModelManifest, GetModelBlocks; delivery/
// model_source.h) needs no session: the model is fetched before
// registering. With TLS the caller's certificate must be allowed and of
// role worker or edge. A request for more than kMaxBlocksPerRequest blocks,
// or for a name that is not a block of the manifest, is INVALID_ARGUMENT
// naming the field.
//
// Thread-safety: gRPC calls handlers on its own threads; the service holds
// no state of its own beyond immutable settings.
#ifndef FEDPEFT_COORDINATOR_SERVICE_H_
#define FEDPEFT_COORDINATOR_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/coordinator.h"
#include "delivery/model_source.h"
#include "proto/fedpeft.grpc.pb.h"
#include "security/certs.h"
#include "security/tls.h"

namespace fedpeft {
namespace coordinator {

class FederationService final : public proto::Federation::Service {
 public:
  // REQUIRES: `engine` outlives the service. `allowlist`: null on a
  // plaintext server (no identities to check); with TLS, the names that may
  // call.
  // `models`: what GetModelManifest and GetModelBlocks answer from (null:
  // FAILED_PRECONDITION, this server delivers no model); must outlive the
  // service.
  FederationService(RoundEngine& engine, size_t chunk_bytes,
                    size_t max_message_bytes,
                    std::unique_ptr<security::Allowlist> allowlist = nullptr,
                    delivery::ModelSource* models = nullptr);

  grpc::Status Register(grpc::ServerContext* ctx,
                        const proto::RegisterRequest* req,
                        proto::RegisterReply* reply) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx,
                         const proto::HeartbeatRequest* req,
                         proto::HeartbeatReply* reply) override;
  grpc::Status GetTask(grpc::ServerContext* ctx, const proto::TaskRequest* req,
                       proto::Task* reply) override;
  grpc::Status DownloadAdapter(
      grpc::ServerContext* ctx, const proto::DownloadRequest* req,
      grpc::ServerWriter<proto::TensorChunk>* writer) override;
  grpc::Status UploadUpdate(grpc::ServerContext* ctx,
                            grpc::ServerReader<proto::UploadMessage>* reader,
                            proto::UploadReply* reply) override;
  grpc::Status GetStatus(grpc::ServerContext* ctx,
                         const proto::StatusRequest* req,
                         proto::StatusReply* reply) override;
  grpc::Status SecAgg(grpc::ServerContext* ctx, const proto::SecAggRequest* req,
                      proto::SecAggReply* reply) override;
  grpc::Status GetModelManifest(grpc::ServerContext* ctx,
                                const proto::ModelManifestRequest* req,
                                proto::ModelManifest* reply) override;
  grpc::Status GetModelBlocks(
      grpc::ServerContext* ctx, const proto::ModelBlocksRequest* req,
      grpc::ServerWriter<proto::ModelBlock>* writer) override;

 private:
  // With TLS: sets *name to the caller's certificate name and *role to the
  // role the CA signed into it (security/certs.h), and checks the name
  // against the allowlist and, when `session` is given, against the name
  // the session belongs to. OK with an empty name on a plaintext server
  // (*role untouched: a plaintext server trusts what it is told).
  grpc::Status Authenticate(const grpc::ServerContext& ctx, const char* call,
                            const std::string* session, std::string* name,
                            security::CertRole* role = nullptr);

  // Authenticate for base-model delivery: a worker's or edge's
  // certificate (any caller on a plaintext server), and a model to deliver.
  grpc::Status AuthenticateFetch(const grpc::ServerContext& ctx,
                                 const char* call, std::string* name);

  RoundEngine& engine_;
  delivery::ModelSource* const models_;
  const size_t chunk_bytes_;
  const size_t max_message_bytes_;
  const std::unique_ptr<security::Allowlist> allowlist_;
};

// A running gRPC server hosting a FederationService.
class FederationServer {
 public:
  // Binds `options.address` (port 0 picks a free port; see port()) with
  // the credentials of options.tls and starts serving. Writes the port to
  // options.port_file when set. Errors name the tls.* key of a certificate
  // or key that cannot be read.
  // `models`: the model it delivers (null: none); must outlive the server.
  static StatusOr<std::unique_ptr<FederationServer>> Start(
      RoundEngine& engine, const ServerOptions& options,
      delivery::ModelSource* models = nullptr);
  // The cloud coordinator's engine, delivering its model.
  static StatusOr<std::unique_ptr<FederationServer>> Start(
      Coordinator& coordinator, const ServerOptions& options) {
    return Start(coordinator.engine(), options, &coordinator.model_source());
  }
  ~FederationServer();  // shuts down

  int port() const { return port_; }
  // Stops accepting calls and waits (up to `grace`) for running ones.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::seconds(2));

 private:
  FederationServer() = default;
  std::unique_ptr<FederationService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace coordinator
}  // namespace fedpeft

#endif  // FEDPEFT_COORDINATOR_SERVICE_H_
