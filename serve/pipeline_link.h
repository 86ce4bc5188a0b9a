// The wire of a pipeline (proto/fedpeft.proto, service Pipeline): the
// gRPC server every stage runs, and the Relay stream each stage keeps to
// the next one.
//
// Security: with tls.enabled every call needs a client certificate the CA
// signed, whose name passes the allowlist, and whose role (security/
// certs.h) is edge: a stage both serves and dials, as an edge does.
// GetPipelineStatus also admits operator certificates (`fedpeft status`).
// A refused call is logged and answered PERMISSION_DENIED.
//
// No LibTorch. Thread-safety: PipelineServer's handlers run on gRPC's
// threads; RelayLink is thread-safe.
#ifndef FEDPEFT_SERVE_PIPELINE_LINK_H_
#define FEDPEFT_SERVE_PIPELINE_LINK_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/status.h"
#include "proto/fedpeft.grpc.pb.h"
#include "security/tls.h"

namespace fedpeft {
namespace serve {

// What a stage's server does with each call; a handler left empty answers
// UNIMPLEMENTED (only the head joins stages and reports status).
struct PipelineHandlers {
  std::function<grpc::Status(const proto::StageReport&,
                             proto::StageAssignment*)>
      join;
  std::function<void(proto::Activation&&)> relay;
  std::function<void(proto::PipelineStatusReply*)> status;
};

class PipelineServer {
 public:
  // Listens on `listen` (port 0: any); the handlers must outlive it.
  static StatusOr<std::unique_ptr<PipelineServer>> Start(
      const std::string& listen, const security::TlsOptions& tls,
      size_t max_message_bytes, PipelineHandlers handlers);
  ~PipelineServer();
  int port() const { return port_; }
  void Shutdown();

 private:
  class Service;
  PipelineServer() = default;
  std::unique_ptr<Service> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

// The share of wall time a stage's compute thread was busy, between two
// reports.
class BusyMeter {
 public:
  BusyMeter();
  void Add(std::chrono::steady_clock::duration busy);
  // Busy time over wall time since the previous call (or construction).
  double TakeFraction();
  // Into `report`: the fraction since the previous report, busy and wall
  // seconds since construction.
  void Fill(proto::StageReport* report);

 private:
  std::mutex mu_;
  std::chrono::steady_clock::duration total_{};  // GUARDED_BY(mu_)
  const std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::duration busy_{};   // GUARDED_BY(mu_)
  std::chrono::steady_clock::time_point since_;  // GUARDED_BY(mu_)
};

// This process's resident and peak memory into `report`.
void FillMemory(proto::StageReport* report);

// A Relay stream to the next stage, fed from a queue by its own thread.
// While the stream is broken, messages are dropped (the head fails their
// sequences when it learns the ring broke) and the stream is opened again,
// at most once a second.
class RelayLink {
 public:
  RelayLink(const security::TlsOptions& tls, size_t max_message_bytes);
  ~RelayLink();

  // Where to relay; a change closes the stream to the old target.
  void SetTarget(const std::string& address);
  void Send(proto::Activation message);
  // Whether the stream to the target works; `error` says why not.
  bool ok(std::string* error) const;

 private:
  void Loop();

  const security::TlsOptions tls_;
  const size_t max_message_bytes_;
  // Made once (a plaintext warning is logged once, not per reconnect).
  StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<proto::Activation> queue_;  // GUARDED_BY(mu_)
  std::string target_;                   // GUARDED_BY(mu_)
  bool ok_ = false;                      // GUARDED_BY(mu_)
  std::string error_ = "not connected";  // GUARDED_BY(mu_)
  bool stop_ = false;                    // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace serve
}  // namespace fedpeft

#endif  // FEDPEFT_SERVE_PIPELINE_LINK_H_
