#include "worker/federation_client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>

#include "common/logging.h"
#include "proto/grpc_util.h"
#include "security/certs.h"
#include "security/dp.h"
#include "security/tls.h"

namespace fedpeft {
namespace worker {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

FederationClient::FederationClient(
    std::string name, const ConnectionOptions& options,
    std::function<proto::WorkerProfile()> profile,
    std::function<Status(const proto::RegisterReply&)> on_registered)
    : name_(std::move(name)),
      options_(options),
      profile_(std::move(profile)),
      on_registered_(std::move(on_registered)) {}

FederationClient::~FederationClient() {
  Stop();
  if (heartbeat_.joinable()) heartbeat_.join();
}

Status FederationClient::Connect() {
  transport::ChannelOptions channel;
  max_message_bytes_ = static_cast<size_t>(options_.max_message_mb) << 20;
  channel.max_message_bytes = max_message_bytes_;
  channel.max_reconnect_backoff = milliseconds(options_.backoff_max_ms);
  if (options_.tls.enabled) {
    // The server takes the certificate's name as this participant's id and
    // refuses another; say so before the first call.
    StatusOr<security::CertificateInfo> cert =
        security::ReadCertificateInfo(options_.tls.cert);
    if (!cert.ok()) return cert.status().WithContext("tls.cert");
    if (cert->common_name != name_) {
      return Status::InvalidArgument(
          "tls.cert '" + options_.tls.cert + "' is the certificate of '" +
          cert->common_name + "', but this participant's id is '" + name_ +
          "' (worker.id / edge.id): the server takes the certificate's name "
          "as the id; set the id to '" +
          cert->common_name + "' or use the certificate issued for '" + name_ +
          "'");
    }
  }
  ASSIGN_OR_RETURN(channel.credentials,
                   security::MakeChannelCredentials(options_.tls, "tls"));
  channel.tls_server_name = options_.tls.server_name;
  ASSIGN_OR_RETURN(channel_, transport::MakeChannel(options_.address, channel));
  stub_ = proto::Federation::NewStub(channel_);
  return Status::Ok();
}

void FederationClient::Stop() {
  stop_ = true;
  std::lock_guard<std::mutex> lock(mu_);
  cv_.notify_all();
}

bool FederationClient::SleepFor(milliseconds d) {
  std::unique_lock<std::mutex> lock(mu_);
  return !cv_.wait_for(lock, d, [this] { return stop_.load(); });
}

std::string FederationClient::session() {
  std::lock_guard<std::mutex> lock(mu_);
  return session_;
}

template <typename Call>
Status FederationClient::WithRetry(const std::string& what, bool idempotent,
                                   Call call) {
  transport::BackoffOptions bo;
  bo.initial = milliseconds(options_.backoff_initial_ms);
  bo.max = milliseconds(options_.backoff_max_ms);
  transport::Backoff backoff(bo);
  while (!stop_) {
    const std::string used = session();
    grpc::Status s = call();
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      unreachable_since_ = Clock::time_point{};
      return Status::Ok();
    }
    if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      // Concurrent calls (an executor's users) that all lost the session
      // register once: the first in; the others find a new session.
      std::lock_guard<std::mutex> registering(register_mu_);
      if (session() == used) {
        FP_LOG_WARN("client",
                    "'{}': {} — the server lost our session ({}); "
                    "registering again",
                    name_, what, s.error_message());
        RETURN_IF_ERROR(Register());
      }
      // The work of a task belongs to the session that got it: after a new
      // registration only asking for a task is repeated.
      if (what != "GetTask") {
        return Status::FailedPrecondition(
            what +
            ": the server lost our session mid-task; registered again, "
            "dropping this task's work");
      }
      continue;
    }
    if (!transport::IsRetryable(s, idempotent)) {
      return transport::FromGrpcStatus(s, what + " to " + options_.address);
    }
    double down = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (unreachable_since_ == Clock::time_point{}) {
        unreachable_since_ = Clock::now();
      }
      down = std::chrono::duration<double>(Clock::now() - unreachable_since_)
                 .count();
    }
    if (options_.give_up_after_s > 0 && down > options_.give_up_after_s) {
      return Status::Unavailable(
          "server " + options_.address + " unreachable for " +
          std::to_string(static_cast<int>(down)) + "s: giving up");
    }
    milliseconds delay = backoff.Next();
    FP_LOG_WARN("client", "'{}': {} failed ({}: {}); retrying in {} ms", name_,
                what, transport::GrpcCodeName(s.error_code()),
                s.error_message(), delay.count());
    if (!SleepFor(delay)) break;
  }
  return Status::Unavailable("stopped");
}

// The CA signs every participant's certificate, so a verified chain alone
// does not make a server. A worker's or operator's certificate cannot serve
// TLS (extended key usage clientAuth only, security/certs.cc), but an
// edge's can: the role the CA bound into the server's certificate must be
// one that serves this client, the coordinator or an edge for a worker, the
// coordinator for an edge (else one edge could pose as the coordinator to
// the others). Checked on the first reply, before anything of it is used.
Status FederationClient::CheckServerRole(const grpc::ClientContext& ctx,
                                         proto::Role my_role) const {
  if (!options_.tls.enabled) return Status::Ok();
  const std::string pem = security::PeerCertificatePem(ctx);
  if (pem.empty()) {
    return Status::FailedPrecondition("server " + options_.address +
                                      " presented no verified certificate");
  }
  StatusOr<security::CertRole> role = security::CertificateRole(pem);
  if (!role.ok()) {
    return role.status().WithContext("the certificate of server " +
                                     options_.address);
  }
  const bool edge_client = my_role == proto::ROLE_EDGE;
  const bool ok = *role == security::CertRole::kCoordinator ||
                  (!edge_client && *role == security::CertRole::kEdge);
  if (ok) return Status::Ok();
  return Status::FailedPrecondition(
      "server " + options_.address + " presented a certificate with role '" +
      security::CertRoleName(*role) + "', expected " +
      (edge_client ? "'coordinator'" : "'coordinator' or 'edge'") +
      ": not a server of this federation (was it issued with the right "
      "`fedpeft certs issue --role`?)");
}

Status FederationClient::RegisterOnce() {
  proto::RegisterRequest req;
  *req.mutable_profile() = profile_();
  proto::RegisterReply reply;
  grpc::ClientContext ctx;
  transport::SetTimeout(
      &ctx, milliseconds(static_cast<int64_t>(options_.rpc_timeout_s * 1000)));
  grpc::Status s = stub_->Register(&ctx, req, &reply);
  if (!s.ok()) return transport::FromGrpcStatus(s, "Register");
  RETURN_IF_ERROR(CheckServerRole(ctx, req.profile().role()));
  RETURN_IF_ERROR(on_registered_(reply));
  std::lock_guard<std::mutex> lock(mu_);
  session_ = reply.session_id();
  heartbeat_ms_ = std::max<int>(50, reply.heartbeat_interval_ms());
  if (reply.chunk_bytes() > 0) {
    chunk_bytes_ = std::min<size_t>(
        reply.chunk_bytes(),
        transport::ChunkBytesForMessageLimit(max_message_bytes_));
  }
  registrations_++;
  FP_LOG_INFO("client", "'{}' registered with federation '{}' at {}", name_,
              reply.federation_id(), options_.address);
  return Status::Ok();
}

Status FederationClient::Register() {
  transport::BackoffOptions bo;
  bo.initial = milliseconds(options_.backoff_initial_ms);
  bo.max = milliseconds(options_.backoff_max_ms);
  transport::Backoff backoff(bo);
  auto start = Clock::now();
  while (!stop_) {
    Status s = RegisterOnce();
    if (s.ok()) return s;
    if (s.code() != StatusCode::kUnavailable &&
        s.code() != StatusCode::kDeadlineExceeded) {
      return s;  // e.g. a config mismatch: retrying cannot help
    }
    double down = std::chrono::duration<double>(Clock::now() - start).count();
    if (options_.give_up_after_s > 0 && down > options_.give_up_after_s) {
      return Status::Unavailable(
          "server " + options_.address + " unreachable for " +
          std::to_string(static_cast<int>(down)) + "s: giving up");
    }
    milliseconds delay = backoff.Next();
    FP_LOG_INFO("client",
                "'{}': server {} not reachable ({}); retrying in {} ms", name_,
                options_.address, s.message(), delay.count());
    if (!SleepFor(delay)) break;
  }
  return Status::Unavailable("stopped");
}

void FederationClient::StartHeartbeat() {
  if (heartbeat_.joinable()) return;
  heartbeat_ = std::thread([this] { HeartbeatLoop(); });
}

void FederationClient::HeartbeatLoop() {
  while (!stop_) {
    int interval;
    std::string sid;
    {
      std::lock_guard<std::mutex> lock(mu_);
      interval = heartbeat_ms_;
      sid = session_;
    }
    if (!SleepFor(milliseconds(interval))) return;
    if (sid.empty()) continue;
    proto::HeartbeatRequest req;
    req.set_session_id(sid);
    proto::HeartbeatReply reply;
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, milliseconds(std::max(1000, interval)));
    grpc::Status s = stub_->Heartbeat(&ctx, req, &reply);
    if (!s.ok()) {
      FP_LOG_DEBUG("client", "'{}': heartbeat failed: {}", name_,
                   s.error_message());
    }
  }
}

StatusOr<proto::Task> FederationClient::GetTask() {
  proto::Task task;
  Status s = WithRetry("GetTask", /*idempotent=*/true, [&]() {
    proto::TaskRequest req;
    req.set_session_id(session());
    req.set_wait_ms(static_cast<uint32_t>(options_.task_wait_ms));
    grpc::ClientContext ctx;
    transport::SetTimeout(&ctx, milliseconds(options_.task_wait_ms + 5000));
    return stub_->GetTask(&ctx, req, &task);
  });
  RETURN_IF_ERROR(s);
  return task;
}

StatusOr<std::string> FederationClient::SecAgg(int64_t round,
                                               proto::SecAggRequest::Step step,
                                               const std::string& message,
                                               Clock::time_point until) {
  const std::string what = "SecAgg " + proto::SecAggRequest::Step_Name(step);
  bool sent = message.empty();
  while (!stop_) {
    const auto left =
        std::chrono::duration_cast<milliseconds>(until - Clock::now());
    if (left.count() <= 0) {
      return Status::DeadlineExceeded(what + ": no result from " +
                                      options_.address + " in time");
    }
    const auto wait =
        std::min<milliseconds>(left, milliseconds(options_.task_wait_ms));
    proto::SecAggReply reply;
    Status s = WithRetry(what, /*idempotent=*/sent, [&]() {
      proto::SecAggRequest req;
      req.set_session_id(session());
      req.set_round(static_cast<uint64_t>(round));
      req.set_step(step);
      if (!sent) req.set_message(message);
      req.set_wait_ms(static_cast<uint32_t>(wait.count()));
      grpc::ClientContext ctx;
      transport::SetTimeout(&ctx, wait + milliseconds(5000));
      return stub_->SecAgg(&ctx, req, &reply);
    });
    RETURN_IF_ERROR(s);
    sent = true;
    if (reply.ready()) return std::move(*reply.mutable_message());
  }
  return Status::Unavailable("stopped");
}

namespace {

// The delivery calls have no session: a NOT_FOUND from them (a server
// without its model file) must not make WithRetry register again.
grpc::Status SessionlessStatus(const grpc::Status& s) {
  if (s.error_code() != grpc::StatusCode::NOT_FOUND) return s;
  return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, s.error_message());
}

}  // namespace

StatusOr<proto::ModelManifest> FederationClient::GetModelManifest(
    proto::Role my_role) {
  proto::ModelManifest manifest;
  Status role_ok;
  Status s = WithRetry("GetModelManifest", /*idempotent=*/true, [&]() {
    grpc::ClientContext ctx;
    transport::SetTimeout(
        &ctx,
        milliseconds(static_cast<int64_t>(options_.rpc_timeout_s * 1000)));
    grpc::Status got =
        stub_->GetModelManifest(&ctx, proto::ModelManifestRequest(), &manifest);
    if (got.ok()) role_ok = CheckServerRole(ctx, my_role);
    return SessionlessStatus(got);
  });
  RETURN_IF_ERROR(s);
  RETURN_IF_ERROR(role_ok);
  return manifest;
}

Status FederationClient::GetModelBlocks(
    const std::vector<std::string>& hashes,
    const std::function<Status(proto::ModelBlock&)>& on_block) {
  Status refused;
  Status s = WithRetry("GetModelBlocks", /*idempotent=*/true, [&]() {
    proto::ModelBlocksRequest req;
    for (const std::string& h : hashes) req.add_hashes(h);
    grpc::ClientContext ctx;
    transport::SetTimeout(
        &ctx,
        milliseconds(static_cast<int64_t>(options_.rpc_timeout_s * 1000)));
    auto reader = stub_->GetModelBlocks(&ctx, req);
    proto::ModelBlock block;
    refused = Status::Ok();
    while (reader->Read(&block)) {
      refused = on_block(block);
      if (!refused.ok()) {
        ctx.TryCancel();
        break;
      }
    }
    grpc::Status done = reader->Finish();
    // Our own refusal is final: not a failure of the call to retry.
    return refused.ok() ? SessionlessStatus(done) : grpc::Status::OK;
  });
  RETURN_IF_ERROR(refused);
  return s;
}

std::string FederationClient::SessionOf(const std::string& user) {
  return user.empty() ? session() : session() + "#" + user;
}

StatusOr<TensorMap> FederationClient::Download(
    int64_t round, uint64_t cached_round,
    const std::map<std::string, transport::TensorSpec>& expected,
    uint64_t* bytes, const std::string& user) {
  TensorMap result;
  Status decode_error;
  Status s = WithRetry("DownloadAdapter", /*idempotent=*/true, [&]() {
    proto::DownloadRequest req;
    req.set_session_id(SessionOf(user));
    req.set_round(static_cast<uint64_t>(round));
    req.set_cached_round(cached_round);
    grpc::ClientContext ctx;
    transport::SetTimeout(
        &ctx,
        milliseconds(static_cast<int64_t>(options_.rpc_timeout_s * 1000)));
    transport::DecoderLimits limits;
    if (!expected.empty()) limits.expected = expected;
    limits.output_dtype = torch::kFloat32;  // F16 or quantized downloads
    limits.require_all_expected = cached_round == 0;
    transport::TensorDecoder decoder(limits);
    auto reader = stub_->DownloadAdapter(&ctx, req);
    proto::TensorChunk chunk;
    uint64_t n = 0;
    decode_error = Status::Ok();
    while (reader->Read(&chunk)) {
      n += chunk.ByteSizeLong();
      if (decode_error.ok()) decode_error = decoder.Add(chunk);
      if (!decode_error.ok()) ctx.TryCancel();
    }
    grpc::Status st = reader->Finish();
    if (!decode_error.ok()) return grpc::Status::OK;  // reported below
    if (st.ok()) {
      auto done = decoder.Finish();
      if (!done.ok()) {
        decode_error = done.status();
      } else {
        result = std::move(done).value();
        *bytes = n;
      }
    }
    return st;
  });
  RETURN_IF_ERROR(s);
  RETURN_IF_ERROR(decode_error.WithContext("adapter from " + options_.address));
  return result;
}

Status FederationClient::UploadStream(
    const proto::UpdateHeader& header,
    const std::function<
        Status(const std::function<bool(const proto::TensorChunk&)>&)>& tensors,
    uint64_t* bytes, const std::string& user) {
  return WithRetry("UploadUpdate", /*idempotent=*/false, [&]() {
    grpc::ClientContext ctx;
    transport::SetTimeout(
        &ctx,
        milliseconds(static_cast<int64_t>(options_.rpc_timeout_s * 1000)));
    proto::UploadReply reply;
    auto writer = stub_->UploadUpdate(&ctx, &reply);
    proto::UploadMessage msg;
    *msg.mutable_header() = header;
    msg.mutable_header()->set_session_id(SessionOf(user));
    uint64_t n = msg.ByteSizeLong();
    if (writer->Write(msg)) {
      Status enc = tensors([&](const proto::TensorChunk& c) {
        proto::UploadMessage m;
        *m.mutable_chunk() = c;
        n += m.ByteSizeLong();
        return writer->Write(m);
      });
      (void)enc;  // a broken stream shows in Finish()
    }
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    *bytes = n;
    return st;
  });
}

Status FederationClient::Upload(proto::UpdateHeader header,
                                const TensorMap& tensors, uint64_t* bytes) {
  return UploadStream(
      header,
      [&](const std::function<bool(const proto::TensorChunk&)>& write) {
        return transport::EncodeTensors(tensors, chunk_bytes_, write);
      },
      bytes, "");
}

Status FederationClient::Upload(proto::UpdateHeader header,
                                const transport::WireTensors& tensors,
                                const transport::Schema* schema,
                                uint64_t* bytes, const std::string& user) {
  return UploadStream(
      header,
      [&](const std::function<bool(const proto::TensorChunk&)>& write) {
        return transport::WriteTensors(tensors, chunk_bytes_, schema, write);
      },
      bytes, user);
}

StatusOr<EncodedUpdate> EncodeUpdate(const TensorMap& update,
                                     const transport::CodecOptions& codec,
                                     double clip_norm, std::mt19937_64* rng) {
  TensorMap x = update;
  for (int attempt = 0;; ++attempt) {
    EncodedUpdate e;
    for (const auto& [key, t] : x) {
      ASSIGN_OR_RETURN(transport::WireTensor w,
                       transport::EncodeTensor(t, codec, rng));
      ASSIGN_OR_RETURN(torch::Tensor d, transport::DecodeTensor(w, key));
      e.decoded[key] = d.to(torch::kFloat32);
      e.wire[key] = std::move(w);
    }
    if (!(clip_norm > 0)) return e;
    const double norm = privacy::GlobalNorm(e.decoded);
    if (norm <= clip_norm) return e;
    if (attempt == 20) {
      return Status::Internal(
          "could not encode the update within the clip norm " +
          std::to_string(clip_norm) + " (decoded norm " + std::to_string(norm) +
          ")");
    }
    // Rounding added (norm - clip_norm) at most; shrink by it (and by at
    // least 1e-6, or float32 rounding could leave the values as they are)
    // and draw again.
    const double excess = std::max(norm - clip_norm, 1e-6 * clip_norm);
    const double scale = clip_norm / (norm + excess);
    for (auto& kv : x) kv.second = kv.second * scale;
  }
}

}  // namespace worker
}  // namespace fedpeft
