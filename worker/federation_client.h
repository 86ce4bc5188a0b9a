// The client side of the fedpeft protocol (proto/fedpeft.proto), shared by
// the two kinds of participant: a worker, and an edge aggregator that is a
// participant of the cloud coordinator while it serves workers of its own.
//
// It owns the channel and the session and makes every call resilient: each
// call has a deadline; UNAVAILABLE (and DEADLINE_EXCEEDED for idempotent
// calls) is retried with capped exponential backoff and jitter; NOT_FOUND
// (the server lost our session, e.g. it restarted) registers again and
// retries. A heartbeat thread keeps the participant alive on the server while
// it works on a round.
//
// What a participant does with a task is not here: the owner calls GetTask,
// Download and Upload in its own loop.
//
// Thread-safety: one thread drives the calls, except that an executor's
// users may Download and Upload concurrently; Stop() from any thread.
#ifndef FEDPEFT_WORKER_FEDERATION_CLIENT_H_
#define FEDPEFT_WORKER_FEDERATION_CLIENT_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "model/llama.h"
#include "proto/fedpeft.grpc.pb.h"
#include "proto/tensor_codec.h"
#include "worker/worker_config.h"

namespace fedpeft {
namespace worker {

// An update encoded for upload, and exactly what the server will decode.
struct EncodedUpdate {
  transport::WireTensors wire;
  TensorMap decoded;  // F32, CPU
};

// Encodes `update` with `codec` (stochastic rounding from `rng`). With
// clip_norm > 0 the decoded update's L2 norm is at most clip_norm, as the
// server checks (DP): `update` must already be clipped to it, and when
// rounding pushes the norm over, the update is shrunk by the excess and
// encoded again.
StatusOr<EncodedUpdate> EncodeUpdate(const TensorMap& update,
                                     const transport::CodecOptions& codec,
                                     double clip_norm, std::mt19937_64* rng);

class FederationClient {
 public:
  // `profile()` is called at every (re)registration; `on_registered(reply)`
  // after each success (e.g. to rebuild the adapter from its config); an
  // error from it ends the registration with that error.
  FederationClient(
      std::string name, const ConnectionOptions& options,
      std::function<proto::WorkerProfile()> profile,
      std::function<Status(const proto::RegisterReply&)> on_registered);
  ~FederationClient();

  // Opens the channel (no network traffic yet).
  Status Connect();
  // Registers, retrying while the server is unreachable (up to
  // give_up_after_s); other errors (a config mismatch) return at once. With
  // TLS, a server whose certificate's role does not serve this client (a
  // worker's or operator's certificate; an edge's, for an edge) is refused
  // with FailedPrecondition before its reply is used.
  Status Register();
  // Starts the heartbeat thread (stopped by Stop() or the destructor).
  void StartHeartbeat();

  // The next task (long poll).
  StatusOr<proto::Task> GetTask();
  // Download, Upload: with `user` set, on behalf of that virtual user of
  // this executor (session "<our session>#<user>"); the calls of several
  // users may run at once, from different threads.
  // The adapter of `round`. With cached_round > 0 the server leaves out
  // tensors unchanged since that round, so the result may be a subset of
  // `expected` (name -> spec); otherwise every expected tensor must come.
  // An empty `expected` checks only the decoder's limits.
  StatusOr<TensorMap> Download(
      int64_t round, uint64_t cached_round,
      const std::map<std::string, transport::TensorSpec>& expected,
      uint64_t* bytes, const std::string& user = "");
  // Uploads `tensors` after `header` (its session_id is filled in).
  // `bytes` gets the serialized size sent.
  Status Upload(proto::UpdateHeader header, const TensorMap& tensors,
                uint64_t* bytes);
  // As above with tensors already encoded (EncodeUpdate); with `schema`,
  // tensors named in it travel by index.
  Status Upload(proto::UpdateHeader header,
                const transport::WireTensors& tensors,
                const transport::Schema* schema, uint64_t* bytes,
                const std::string& user = "");

  // One step of the secure aggregation of `round` (proto SecAggRequest):
  // hands `message` over (when not empty), then long-polls until the step's
  // result is ready and returns it. DeadlineExceeded past `until`;
  // FailedPrecondition when the server has left this worker out.
  StatusOr<std::string> SecAgg(int64_t round, proto::SecAggRequest::Step step,
                               const std::string& message,
                               std::chrono::steady_clock::time_point until);

  // Base-model delivery (no session needed; callable before Register).
  // The server's model manifest; with TLS, first checks that the server's
  // certificate serves a client of `my_role` (as Register does).
  StatusOr<proto::ModelManifest> GetModelManifest(proto::Role my_role);
  // Streams the blocks `hashes` names, calling on_block for each; an error
  // from on_block ends the call with it. Retried (from the start) while the
  // server is unreachable.
  Status GetModelBlocks(
      const std::vector<std::string>& hashes,
      const std::function<Status(proto::ModelBlock&)>& on_block);

  void Stop();
  bool stopped() const { return stop_; }
  // Sleeps unless stopped; false when stopped meanwhile.
  bool SleepFor(std::chrono::milliseconds d);
  const std::string& address() const { return options_.address; }
  int64_t registrations() const { return registrations_; }
  size_t max_message_bytes() const { return max_message_bytes_; }

 private:
  // One UploadUpdate call: `header`, then the chunks `tensors` writes.
  Status UploadStream(
      const proto::UpdateHeader& header,
      const std::function<Status(
          const std::function<bool(const proto::TensorChunk&)>&)>& tensors,
      uint64_t* bytes, const std::string& user);
  template <typename Call>
  Status WithRetry(const std::string& what, bool idempotent, Call call);
  Status RegisterOnce();
  // FailedPrecondition unless the server's certificate carries a role that
  // serves a client of `my_role` (a no-op without TLS).
  Status CheckServerRole(const grpc::ClientContext& ctx,
                         proto::Role my_role) const;
  void HeartbeatLoop();
  std::string session();
  // The session a call on behalf of `user` names (ours when empty).
  std::string SessionOf(const std::string& user);

  const std::string name_;  // for logs
  const ConnectionOptions options_;
  std::function<proto::WorkerProfile()> profile_;
  std::function<Status(const proto::RegisterReply&)> on_registered_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<proto::Federation::Stub> stub_;
  std::atomic<size_t> chunk_bytes_{1 << 20};
  size_t max_message_bytes_ = 16 << 20;
  std::atomic<bool> stop_{false};
  std::atomic<int64_t> registrations_{0};
  std::mutex register_mu_;  // one re-registration at a time
  std::mutex mu_;
  std::condition_variable cv_;
  std::string session_;      // GUARDED_BY(mu_)
  int heartbeat_ms_ = 2000;  // GUARDED_BY(mu_)
  std::chrono::steady_clock::time_point
      unreachable_since_{};  // GUARDED_BY(mu_)
  std::thread heartbeat_;
};

}  // namespace worker
}  // namespace fedpeft

#endif  // FEDPEFT_WORKER_FEDERATION_CLIENT_H_
